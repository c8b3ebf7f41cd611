# Writes to stdout and stderr through print, the raw file descriptors and a child process.
import os
import subprocess
import sys


def main_handler(event, context):
    tag = context["request_id"]
    print(f"print to stdout {tag}")
    print(f"print to stderr {tag}", file=sys.stderr)
    os.write(1, f"fd write {tag}\n".encode())
    subprocess.run([sys.executable, "-c", f"print('child process {tag}')"], check=True)
    return {"isBase64Encoded": False, "statusCode": 200, "headers": {}, "body": "printed"}
