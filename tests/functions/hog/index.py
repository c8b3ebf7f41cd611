# Allocates the query parameter "mb" megabytes (default 200) and touches every page of it.
def main_handler(event, context):
    mb = int((event.get("queryString") or {}).get("mb", 200))
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return {"isBase64Encoded": False, "statusCode": 200, "headers": {},
            "body": f"allocated {mb} MB"}
