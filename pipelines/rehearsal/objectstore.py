"""S3 as a cluster has it: one endpoint, several identities, each allowed only its own buckets.

moto's S3 server with its IAM authorization switched on: a request must be signed with an access
key moto issued, and that key's policy must allow the bucket. So a pod without the Secret's
credentials (or with another identity's) is refused exactly as MinIO or AWS would refuse it. Every
signed request is recorded with the identity that made it, so the report can say what each task
read and wrote.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REGION = "us-east-1"
_CREDENTIAL = re.compile(r"Credential=([^/]+)/")


@dataclass(frozen=True)
class Identity:
    name: str
    access_key_id: str
    secret_access_key: str
    buckets: tuple[str, ...]


@dataclass(frozen=True)
class S3Access:
    identity: str
    method: str
    bucket: str
    key: str
    status: int


@dataclass
class ObjectStore:
    """A running S3 endpoint: identities by name and the log of signed requests."""

    address: str
    port: int
    identities: dict[str, Identity] = field(default_factory=dict)
    accesses: list[S3Access] = field(default_factory=list)
    _server: Any = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def admin_client(self) -> Any:
        """A client for setting the store up (only while authorization is still off)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
            region_name=REGION,
        )

    def client(self, identity: str) -> Any:
        import boto3

        who = self.identities[identity]
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=who.access_key_id,
            aws_secret_access_key=who.secret_access_key,
            region_name=REGION,
        )

    def add_identity(
        self, name: str, buckets: Iterable[str], actions: Iterable[str] = ("s3:*",)
    ) -> Identity:
        """An IAM user allowed ``actions`` (default ``s3:*``) on ``buckets`` (created) and
        nothing else."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
            region_name=REGION,
        )
        buckets = tuple(buckets)
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        resources = [f"arn:aws:s3:::{b}{suffix}" for b in buckets for suffix in ("", "/*")]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": resources}],
        }
        iam.put_user_policy(
            UserName=name, PolicyName=f"{name}-s3", PolicyDocument=json.dumps(policy)
        )
        admin = self.admin_client()
        existing = {b["Name"] for b in admin.list_buckets().get("Buckets", [])}
        for bucket in buckets:
            if bucket not in existing:
                admin.create_bucket(Bucket=bucket)
        identity = Identity(name, key["AccessKeyId"], key["SecretAccessKey"], buckets)
        self.identities[name] = identity
        return identity

    def require_signatures(self) -> None:
        """From now on every request must be signed by an identity allowed the bucket."""
        from moto import settings

        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0

    def accesses_since(self, start: int) -> list[S3Access]:
        return self.accesses[start:]

    def stop(self) -> None:
        from moto import settings

        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def start_object_store(address: str, port: int) -> ObjectStore:
    """moto's S3 (with IAM) on ``address:port``, every request recorded with its access key."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    store = ObjectStore(address, port)
    app = DomainDispatcherApplication(create_backend_app)
    by_key: dict[str, str] = {}

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        access_key = match.group(1) if match else ""

        def record(status: str, headers: Any, *rest: Any) -> Any:
            path = environ.get("PATH_INFO", "/").lstrip("/")
            bucket, _, key = path.partition("/")
            if bucket:
                by_key.update({i.access_key_id: i.name for i in store.identities.values()})
                store.accesses.append(
                    S3Access(
                        by_key.get(access_key, access_key or "anonymous"),
                        environ["REQUEST_METHOD"],
                        bucket,
                        key,
                        int(status.split()[0]),
                    )
                )
            return start_response(status, headers, *rest)

        return app(environ, record)

    store._server = make_server(address, port, recording, threaded=True)
    store._thread = threading.Thread(target=store._server.serve_forever, daemon=True)
    store._thread.start()
    return store
