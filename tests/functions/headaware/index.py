# Answers HEAD as HEAD, as web frameworks do: no body, and the Content-Length its GET would
# carry (the query parameter "declare=0" leaves the Content-Length out).
import json

BODY = json.dumps({"message": "forty-five bytes of a GET body"})


def main_handler(event, context):
    headers = {"Content-Type": "application/json", "ETag": '"v1"'}
    if (event.get("queryString") or {}).get("declare") != "0":
        headers["Content-Length"] = str(len(BODY.encode()))
    return {
        "isBase64Encoded": False,
        "statusCode": 200,
        "headers": headers,
        "body": "" if event["httpMethod"] == "HEAD" else BODY,
    }
