"""Create the bucket of the configured object root (idempotent), then prove the root is writable.

The compose stack's `objectstore-init` step. It reads the same configuration the stages read
(``ICG_CONFIG`` plus ``ICG__STORAGE__*`` overrides) and the standard AWS credential variables, so the
bucket it creates is, by construction, the one the stages will use. Exits non-zero with a message
if the object store does not answer in time or the root is not an ``s3://`` URI.
"""

from __future__ import annotations

import logging
import sys
import time
from urllib.parse import urlparse

from icg_core.config import load_config
from icg_core.storage import ObjectStore

log = logging.getLogger("icg.create_bucket")


def ensure_bucket(timeout_s: float = 120.0) -> str:
    """Create the bucket named by ``storage.root`` unless it exists; returns the bucket name.

    Args:
        timeout_s: how long to keep retrying while the object store starts up.

    Raises:
        ValueError: the configured root is not an ``s3://bucket/...`` URI.
        TimeoutError: the object store did not accept the request in time.
    """
    import boto3
    import botocore.exceptions

    storage = load_config().storage
    root = urlparse(storage.root)
    if root.scheme != "s3" or not root.netloc:
        raise ValueError(
            f"storage.root must be s3://BUCKET/PREFIX for the compose stack, got {storage.root!r}"
        )
    bucket = root.netloc
    client = boto3.client("s3", endpoint_url=storage.s3_endpoint_url, region_name=storage.s3_region)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.head_bucket(Bucket=bucket)
            log.info("bucket %s exists at %s", bucket, storage.s3_endpoint_url or "AWS")
            break
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            location = (
                {}
                if storage.s3_region == "us-east-1"
                else {"CreateBucketConfiguration": {"LocationConstraint": storage.s3_region}}
            )
            client.create_bucket(Bucket=bucket, **location)
            log.info("created bucket %s at %s", bucket, storage.s3_endpoint_url or "AWS")
            break
        except botocore.exceptions.EndpointConnectionError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"object store at {storage.s3_endpoint_url} not reachable in {timeout_s}s"
                ) from exc
            time.sleep(2.0)
    ObjectStore.from_config(storage).check_writable()
    log.info("object root %s is writable", storage.root)
    return bucket


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ensure_bucket()
    except (ValueError, TimeoutError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
