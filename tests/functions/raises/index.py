# Raises from inside a nested call, so the stack trace has more than one frame.
def check(event):
    raise ValueError("raised on purpose")


def main_handler(event, context):
    check(event)
