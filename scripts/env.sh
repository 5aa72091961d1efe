# Sourced by run.sh and manage.sh: on first use writes .env with generated keys for the embedded
# defaults (django-environ reads it). A deployment sets the environment instead.
if [ ! -f .env ]; then
  umask 077
  "$PYTHON" - > .env <<'PY'
import secrets
from cryptography.fernet import Fernet
print("# Written by `make run` on first start; keep it secret. See README, Configuration.")
print("DEBUG=1")
print(f"SECRET_KEY={secrets.token_urlsafe(50)}")
print(f"DOCKERSUPPORT_ENCRYPTION_KEY={Fernet.generate_key().decode()}")
PY
  echo "Wrote .env with a new SECRET_KEY and DOCKERSUPPORT_ENCRYPTION_KEY (keep it: stored secrets need that key)."
fi
mkdir -p var
