# Ends its own process without answering, as a stray os._exit or a segfault would. The query
# parameter "how" picks: "exit" (default, os._exit(1)), "segv" (SIGSEGV), "none" (answers).
import os
import signal


def main_handler(event, context):
    how = (event.get("queryString") or {}).get("how", "exit")
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how != "none":
        os._exit(1)
    return {"isBase64Encoded": False, "statusCode": 200, "headers": {}, "body": str(os.getpid())}
