# Says which function answered (context["function_name"]): for traffic-split tests.
import json


def main_handler(event, context):
    return {
        "isBase64Encoded": False,
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"function": context["function_name"]}),
    }
