"""Settings as code: apply a YAML settings file to the database, and export the database as one.

Applying is idempotent and atomic: every error of the file is collected with its path
(`projects[0].connections[1].role_arn: not an IAM role ARN`) and any error changes nothing.
`${VAR}` in a string is taken from the environment (`$$` is a literal `$`). Export writes no
secret; applying an exported file keeps the secrets already stored. Objects that the file does
not mention are left alone: apply adds and updates, it never deletes; the lists an entry gives
replace what is stored (a configuration's logins, an agent's projects, a project's `members`, so
roles are revoked as code). Users are not created by the file. A file may come from an
untrusted hand: reading refuses, as errors, files over 1 MiB, alias bombs, self-referencing
anchors, deep nesting, and `${VAR}` naming one of the server's own settings.
"""

from .applying import ApplyReport, apply_settings
from .exporting import dump_settings, export_settings
from .format import SettingsFileError
from .reading import MAX_FILE_BYTES, parse_settings, read_settings

__all__ = ["ApplyReport", "MAX_FILE_BYTES", "SettingsFileError", "apply_settings", "dump_settings", "export_settings",
           "parse_settings", "read_settings"]
