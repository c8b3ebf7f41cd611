# A binary body (Base64 in the integration response) and several Set-Cookie headers.
import base64

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def main_handler(event, context):
    return {
        "isBase64Encoded": True,
        "statusCode": 201,
        "headers": {
            "Content-Type": "image/png",
            "Set-Cookie": ["a=1; Path=/", "b=2; Path=/; HttpOnly"],
            "Connection": "close",
            "Transfer-Encoding": "chunked",
            "X-Multi": ["v1", "v2"],
        },
        "body": base64.b64encode(PNG_HEADER).decode("ascii"),
    }
