# For the local SCF API: answers the event it got (not a CLB event) and its context; an event
# with "sleep" sleeps that long first, one with "raise" raises, one with "say" prints it.
import time


def main_handler(event, context):
    if "say" in event:
        print(event["say"])
    time.sleep(float(event.get("sleep", 0)))
    if "raise" in event:
        raise ValueError(event["raise"])
    return {"got": event, "request_id": context["request_id"],
            "time_limit_in_ms": context["time_limit_in_ms"]}
