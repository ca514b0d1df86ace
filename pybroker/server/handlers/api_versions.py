"""ApiVersions (key 18): what this broker implements, version ranges per API."""
from pybroker.protocol import SUPPORTED, ErrorCode


def advertised(handlers) -> list[dict]:
    return [{"api_key": key, "min_version": SUPPORTED[key][0], "max_version": SUPPORTED[key][1]}
            for key in sorted(handlers)]


def handle(ctx, request) -> dict:
    return {"error_code": ErrorCode.NONE, "api_keys": ctx.worker.api_versions,
            "throttle_time_ms": 0}
