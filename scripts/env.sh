# Sourced by run.sh and manage.sh: on first use writes .env with generated keys for the embedded
# defaults (django-environ reads it). A deployment sets the environment instead.
#
# .env holds SECRET_KEY and the key that decrypts every stored secret, and var/ the database that
# holds them encrypted, the sessions and the per-build Docker configs: none of it is anyone else's
# business on this machine. umask 077 makes everything these scripts and the processes they start
# create private (the database and its -wal/-shm files, the beat schedule, build config dirs);
# the chmods below fix what an earlier run, an older version of this script or a copy left
# readable, since a umask only applies to new files.
umask 077
if [ ! -f .env ]; then
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
chmod 600 .env
mkdir -p var
# GNU chmod -R never follows a symbolic link met inside var/, so this cannot reach files elsewhere.
chmod 700 var
chmod -R go-rwx var/
