# Sleeps for the query parameter "seconds" (default 0), then answers when it started and ended.
import json
import os
import time


def main_handler(event, context):
    seconds = float((event.get("queryString") or {}).get("seconds", 0))
    started = time.time()
    time.sleep(seconds)
    return {
        "isBase64Encoded": False,
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"started": started, "ended": time.time(), "pid": os.getpid()}),
    }
