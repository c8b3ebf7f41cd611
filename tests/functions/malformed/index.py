# Returns each kind of malformed integration response, chosen by the query parameter "kind".

RESPONSES = {
    "not_json": None,  # handled below: a value JSON cannot hold
    "array": [1, 2, 3],
    "string": "hello",
    "no_status": {"body": "x"},
    "status_string": {"statusCode": "200", "body": "x"},
    "status_low": {"statusCode": 99, "body": "x"},
    "status_high": {"statusCode": 600, "body": "x"},
    "status_bool": {"statusCode": True, "body": "x"},
    "headers_list": {"statusCode": 200, "headers": ["a", "b"], "body": "x"},
    "header_int": {"statusCode": 200, "headers": {"X-A": 1}, "body": "x"},
    "header_crlf": {"statusCode": 200, "headers": {"X-A": "a\r\nX-Injected: 1"}, "body": "x"},
    "b64_string": {"statusCode": 200, "isBase64Encoded": "false", "body": "x"},
    "bad_base64": {"statusCode": 200, "isBase64Encoded": True, "body": "%%%not base64"},
    "body_dict": {"statusCode": 200, "body": {"a": 1}},
    "too_large": {"statusCode": 200, "body": "x" * (7 * 1024 * 1024)},
}


def main_handler(event, context):
    kind = event["queryString"].get("kind", "")
    if kind == "not_json":
        return {1, 2}  # a set: not JSON-serialisable
    return RESPONSES[kind]
