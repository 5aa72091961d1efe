"""Amazon ECR Public's API (`ecr-public`) for the tests, which moto lacks: exactly the requests dockersupport sends,
as AWS documents them (JSON 1.1: `POST /` with `X-Amz-Target: SpencerFrontendService.<Action>` and
`Content-Type: application/x-amz-json-1.1`):

- `GetAuthorizationToken` `{}` → `{"authorizationData": {"authorizationToken": base64("AWS:<token>"), "expiresAt": t}}`;
- `DescribeImages` `{registryId?, repositoryName, imageIds?, nextToken?, maxResults?}` →
  `{"imageDetails": [{registryId, repositoryName, imageDigest, imageTags, imagePushedAt}], "nextToken"?}`;
- `BatchDeleteImage` `{registryId?, repositoryName, imageIds: [{imageDigest | imageTag}]}` →
  `{"imageIds": [deleted], "failures": [{imageId, failureCode, failureReason}]}` (a tag alone is removed; the image
  goes with its last tag or its digest);
- `DescribeRegistries` `{maxResults?, nextToken?}` → `{"registries": [{registryId, registryArn, registryUri, verified,
  aliases: [{name, status, primaryRegistryAlias, defaultRegistryAlias}]}]}` (the caller's registry, its aliases);
- errors: HTTP 400 `{"__type": "<Code>", "message": "..."}`.

Every request must carry a SigV4 `Authorization` whose scope is `<date>/us-east-1/ecr-public/aws4_request`, signed
with a known key pair (the signature is checked). STS `AssumeRole` (query protocol, any region) is answered too, so
that a connection with an IAM role can use one endpoint URL for both, as with a VPC endpoint.
"""

import base64
import json
import secrets
import time
import uuid
from urllib.parse import parse_qs

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .stand_in import Answer, ScriptedService, StandIn

TARGET_PREFIX = "SpencerFrontendService."
REGION = "us-east-1"
SERVICE = "ecr-public"


def _json(body, status=200) -> Answer:
    return Answer(status, {"Content-Type": "application/x-amz-json-1.1",
                           "x-amzn-RequestId": str(uuid.uuid4())}, json.dumps(body).encode())


def aws_error(code: str, message: str, status: int = 400) -> Answer:
    return _json({"__type": code, "message": message}, status)


class EcrPublicStandIn(ScriptedService):
    """`EcrPublicStandIn(keys={access key ID: secret key})`, started with `with` on a free port of 127.0.0.1.

    `.push(repository, digest, *tags)` puts an image; `.repositories[repository][digest]` is its set of tags;
    `.calls` every request understood ({target, region, service, access_key, body}); `.deleted` each image id
    BatchDeleteImage removed; `.denied[access key]` actions answered with AccessDeniedException; `.token`.
    """

    def __init__(self, *, keys: dict[str, str], registry_id: str = "123456789012", aliases=("team",),
                 host: str = "127.0.0.1", token_lifetime: float = 12 * 3600):
        self.keys = dict(keys)
        self.registry_id, self.aliases = registry_id, list(aliases)
        self.token = "ecr-public-token-" + secrets.token_hex(8)
        self.token_lifetime = token_lifetime
        self.repositories: dict[str, dict[str, set[str]]] = {}
        self.calls: list[dict] = []
        self.deleted: list[dict] = []
        self.denied: dict[str, set[str]] = {}
        self.assumed: list[dict] = []  # AssumeRole's parameters, in order
        self._sessions: dict[str, str] = {}  # temporary access key → its session token
        self.stand_in = StandIn(host, self._answer)


    def push(self, repository: str, digest: str, *tags: str) -> str:
        images = self.repositories.setdefault(repository, {})
        for others in images.values():  # a tag points to one image
            others.difference_update(tags)
        images.setdefault(digest, set()).update(tags)
        return digest

    def targets(self) -> list[str]:
        return [call["target"] for call in self.calls]

    # --- the wire ---------------------------------------------------------------------------------

    def _answer(self, recorded) -> Answer:
        headers = {name.lower(): value for name, value in recorded.headers.items()}
        if recorded.method != "POST" or recorded.path != "/":
            return aws_error("UnknownOperationException", "Unknown operation", 404)
        signed = self._signature_problem(recorded, headers)
        if isinstance(signed, Answer):
            return signed
        access_key, region, service = signed
        target = headers.get("x-amz-target", "")
        if not target and service == "sts":
            return self._sts(parse_qs(recorded.body.decode()), access_key, region)
        if service != SERVICE or region != REGION:
            return aws_error("InvalidSignatureException",
                             f"Credential should be scoped to a valid region, not '{region}'." if region != REGION
                             else f"Credential should be scoped to correct service: '{SERVICE}'.")
        if headers.get("content-type") != "application/x-amz-json-1.1" or not target.startswith(TARGET_PREFIX):
            return aws_error("UnknownOperationException", "Unknown operation")
        action = target.removeprefix(TARGET_PREFIX)
        try:
            body = json.loads(recorded.body or b"{}")
        except ValueError:
            return aws_error("SerializationException", "Start of structure or map found where not expected.")
        self.calls.append({"target": action, "region": region, "service": service, "access_key": access_key,
                           "body": body})
        if action in self.denied.get(access_key, ()):
            return aws_error("AccessDeniedException", f"User: arn:aws:iam::{self.registry_id}:user/ci is not "
                                                      f"authorized to perform: ecr-public:{action}")
        handler = {"GetAuthorizationToken": self._token, "DescribeImages": self._describe_images,
                   "BatchDeleteImage": self._batch_delete, "DescribeRegistries": self._describe_registries}.get(action)
        if handler is None:
            return aws_error("UnknownOperationException", f"Unknown operation {action}")
        return handler(body)

    def _signature_problem(self, recorded, headers):
        """(access key, region, service) of a request signed with a known key; else AWS's answer."""
        authorization = headers.get("authorization", "")
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            return aws_error("MissingAuthenticationTokenException", "Missing Authentication Token", 403)
        try:
            fields = dict(part.strip().split("=", 1) for part in authorization.split(" ", 1)[1].split(","))
            access_key, _date, region, service, _end = fields["Credential"].split("/")
            signed_names = fields["SignedHeaders"].split(";")
        except (ValueError, KeyError):
            return aws_error("IncompleteSignatureException", "Authorization header requires 'Credential', "
                                                             "'Signature' and 'SignedHeaders'.")
        secret = self.keys.get(access_key)
        if secret is None:
            return aws_error("UnrecognizedClientException", "The security token included in the request is invalid.")
        if access_key in self._sessions and headers.get("x-amz-security-token") != self._sessions[access_key]:
            return aws_error("UnrecognizedClientException", "The security token included in the request is invalid.")
        request = AWSRequest(method="POST", url=f"http://{headers.get('host', '')}/", data=recorded.body,
                             headers={name: headers[name] for name in signed_names if name in headers})
        request.context["timestamp"] = headers.get("x-amz-date", "")
        signer = SigV4Auth(Credentials(access_key, secret), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if fields.get("Signature") != expected:
            return aws_error("InvalidSignatureException", "The request signature we calculated does not match the "
                                                          "signature you provided. Check your AWS Secret Access Key "
                                                          "and signing method.", 403)
        return access_key, region, service

    def _token(self, body) -> Answer:
        token = base64.b64encode(f"AWS:{self.token}".encode()).decode()
        return _json({"authorizationData": {"authorizationToken": token,
                                            "expiresAt": time.time() + self.token_lifetime}})

    def _describe_registries(self, body) -> Answer:
        aliases = [{"name": name, "status": "ACTIVE", "primaryRegistryAlias": i == 0, "defaultRegistryAlias": i == 0}
                   for i, name in enumerate(self.aliases)]
        return _json({"registries": [{
            "registryId": self.registry_id, "registryArn": f"arn:aws:ecr-public::{self.registry_id}:registry/"
                                                           f"{self.registry_id}",
            "registryUri": f"public.ecr.aws/{self.aliases[0] if self.aliases else self.registry_id}",
            "verified": False, "aliases": aliases}]})

    def _repository(self, body):
        name = body.get("repositoryName", "")
        registry = body.get("registryId", self.registry_id)
        if registry != self.registry_id or name not in self.repositories:
            return aws_error("RepositoryNotFoundException", f"The repository with name '{name}' does not exist in "
                                                            f"the registry with id '{registry}'")
        return self.repositories[name]

    def _describe_images(self, body) -> Answer:
        images = self._repository(body)
        if isinstance(images, Answer):
            return images
        details = []
        for image_id in body.get("imageIds") or []:
            digest = image_id.get("imageDigest") or next(
                (d for d, tags in images.items() if image_id.get("imageTag") in tags), None)
            if digest not in images:
                return aws_error("ImageNotFoundException", f"The image with imageId {json.dumps(image_id)} does not "
                                                           f"exist within the repository with name "
                                                           f"'{body['repositoryName']}'")
            details.append(digest)
        digests = details if body.get("imageIds") else sorted(images)
        start = int(body.get("nextToken") or 0)
        size = int(body.get("maxResults") or 100)
        page = digests[start:start + size]
        answer = {"imageDetails": [{"registryId": self.registry_id, "repositoryName": body["repositoryName"],
                                    "imageDigest": digest, "imageTags": sorted(images[digest]),
                                    "imagePushedAt": time.time()} for digest in page]}
        if start + size < len(digests):
            answer["nextToken"] = str(start + size)
        return _json(answer)

    def _batch_delete(self, body) -> Answer:
        images = self._repository(body)
        if isinstance(images, Answer):
            return images
        deleted, failures = [], []
        for image_id in body.get("imageIds") or []:
            digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
            if not digest and not tag:
                failures.append({"imageId": image_id, "failureCode": "MissingDigestAndTag",
                                 "failureReason": "Missing image digest and tag"})
            elif digest and not digest.startswith("sha256:"):
                failures.append({"imageId": image_id, "failureCode": "InvalidImageDigest",
                                 "failureReason": "Invalid request parameters: image digest should satisfy the "
                                                  "regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'"})
            elif digest:
                if digest not in images:
                    failures.append({"imageId": image_id, "failureCode": "ImageNotFound",
                                     "failureReason": "Requested image not found"})
                    continue
                images.pop(digest)
                deleted.append({"imageDigest": digest})
            else:
                owner = next((d for d, tags in images.items() if tag in tags), None)
                if owner is None:
                    failures.append({"imageId": image_id, "failureCode": "ImageNotFound",
                                     "failureReason": "Requested image not found"})
                    continue
                images[owner].discard(tag)
                if not images[owner]:
                    images.pop(owner)
                deleted.append({"imageDigest": owner, "imageTag": tag})
        self.deleted.extend(deleted)
        return _json({"imageIds": deleted, "failures": failures})

    def _sts(self, params, access_key, region) -> Answer:
        """STS AssumeRole as AWS documents it (XML), for a connection with an IAM role."""
        if params.get("Action") != ["AssumeRole"]:
            return Answer(400, {"Content-Type": "text/xml"}, b"<ErrorResponse><Error><Code>InvalidAction</Code>"
                                                             b"</Error></ErrorResponse>")
        flat = {name: values[0] for name, values in params.items()}
        self.assumed.append({**flat, "caller": access_key, "region": region})
        key, secret, token = "ASIA" + secrets.token_hex(8).upper(), secrets.token_hex(20), secrets.token_hex(32)
        self.keys[key], self._sessions[key] = secret, token
        role = flat["RoleArn"].rsplit("/", 1)[-1]
        account = flat["RoleArn"].split(":")[4]
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        xml = (f'<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
               f"<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
               f"<SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials>"
               f"<AssumedRoleUser><AssumedRoleId>AROAEXAMPLE:{flat['RoleSessionName']}</AssumedRoleId>"
               f"<Arn>arn:aws:sts::{account}:assumed-role/{role}/{flat['RoleSessionName']}</Arn></AssumedRoleUser>"
               f"</AssumeRoleResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
               f"</AssumeRoleResponse>")
        return Answer(200, {"Content-Type": "text/xml"}, xml.encode())
