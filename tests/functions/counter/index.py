# Counts its invocations in module state: the count grows only while the same instance serves.
import json
import os

calls = 0


def main_handler(event, context):
    global calls
    calls += 1
    return {
        "isBase64Encoded": False,
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"calls": calls, "pid": os.getpid()}),
    }
