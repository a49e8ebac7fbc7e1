#!/usr/bin/env bash
# PostgreSQL server binaries for the cluster tests: found (pg_config --bindir, /usr/lib/postgresql/*/bin), or
# installed from the OS packages. Without them those tests skip, saying why; nothing else depends on them.
set -u
found() {
  { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; } ||
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
found && exit 0
echo "installing PostgreSQL server binaries (apt-get install -y postgresql) for the cluster tests" >&2
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
{ $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null; } 2>/dev/null
found || echo "PostgreSQL could not be installed: the PostgreSQL tests will be skipped" >&2
exit 0
