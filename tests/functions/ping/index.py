# A fixed, small integration response: for traffic-split tests that count who answered.


def main_handler(event, context):
    return {"isBase64Encoded": False, "statusCode": 200,
            "headers": {"Content-Type": "text/plain"}, "body": "scf"}
