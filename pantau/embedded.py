"""Private PostgreSQL and mosquitto instances under a state directory, on free loopback ports.

Used by `pantau up` when no URLs are configured, by the test fixtures and by the benchmark.
`pantau up`'s mosquitto is `secure`: the dynamic-security plugin, anonymous access off, a packet
size limit, and a TLS listener when certificate files are given (pantau.broker); the test
fixtures' brokers are not, so the tests that do not test security connect anonymously.
PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system user
(`runuser`). The cluster gets a generated password (kept in the state directory, mode 0600), as do
the services' roles (`login_password`), and listens on 127.0.0.1 only. TimescaleDB is preloaded
when the extension is installed.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pantau.errors import ConfigError, EmbeddedServiceError
from pantau.mqtt import free_port
from pantau.settings import SHIPPED_DIR
from pantau.supervisor import die_with_parent

if TYPE_CHECKING:
    from pantau.broker import AccountBook

_SERVICE_USER = "postgres"
_START_TIMEOUT_S = 60
# The largest MQTT packet a client may send to the secure broker; a larger one drops the client.
# Ingest records a payload over [ingest] max_payload_bytes (64 KiB) as an `oversize` rejection, so
# payloads between the two stay visible in rejected_messages; the rules' retained open-alerts
# snapshot is bounded below it (rules/sinks.py). mosquitto 2.0 has this limit for all clients
# only (per_listener_settings does not cover it), pantau's services included.
MAX_PACKET_BYTES = 256 * 1024


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path))


def postgres_bindir() -> Path:
    """Directory of initdb/pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key, reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise EmbeddedServiceError(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql) "
        "or set PANTAU_DATABASE_URL"
    )


def mosquitto_binary() -> Path:
    """The mosquitto broker binary."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        raise EmbeddedServiceError(
            "mosquitto not found: install it (Debian: apt-get install mosquitto) or set PANTAU_MQTT_URL"
        )
    return Path(found)


def timescaledb_installed(bindir: Path) -> bool:
    """True when the TimescaleDB extension library is installed for this PostgreSQL."""
    try:
        pkglibdir = subprocess.run(
            [str(bindir / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pkglibdir = str(bindir.parent / "lib")
    return bool(glob.glob(os.path.join(pkglibdir, "timescaledb*.so")))


def _as_service_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam(_SERVICE_USER)
    except KeyError:
        raise EmbeddedServiceError(
            "running as root, PostgreSQL needs an unprivileged user: create the 'postgres' user "
            "(it comes with Debian's postgresql package)"
        ) from None
    return ["runuser", "-u", _SERVICE_USER, "--", *cmd]


def _chown_for_service(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_SERVICE_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        for root, dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _ensure_traversable(path: Path) -> None:
    """Let the service user reach `path` (test temp dirs are 0700 by default)."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
        if parent == Path("/"):
            break


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EmbeddedServiceError(f"{what} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in `root` (data in root/data), started with pg_ctl from `bindir`."""

    root: Path
    port: int = 0
    host: str = "127.0.0.1"
    timescaledb: bool | None = None  # None: preload when installed
    database: str = "pantau"
    bindir: Path = field(default_factory=postgres_bindir)  # initdb, pg_ctl, postgres (and pg_config)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.data = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self._password_file = self.root / "password"
        if self.timescaledb is None:
            self.timescaledb = timescaledb_installed(self.bindir)

    @property
    def password(self) -> str:
        return self._password_file.read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://pantau:{self.password}@{self.host}:{self.port}/{self.database}"

    def login_password(self, role: str) -> str:
        """The password `role` logs in with (the services' roles of `pantau.store.grants`): made on
        first use and kept in the state directory (`role-passwords.json`, mode 0600)."""
        path = self.root / "role-passwords.json"
        try:
            passwords = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            passwords = {}
        if role not in passwords:
            passwords[role] = secrets.token_urlsafe(24)
            # Created 0600, never readable by others for an instant.
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(passwords, indent=2) + "\n")
            os.replace(path.with_suffix(".tmp"), path)
        return str(passwords[role])

    @property
    def admin_url(self) -> str:
        return f"postgresql://pantau:{self.password}@{self.host}:{self.port}/postgres"

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb with a generated password for the `pantau` superuser."""
        self.root.mkdir(parents=True, exist_ok=True)
        _ensure_traversable(self.root)
        self._password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self._password_file.chmod(0o600)
        pwfile = self.root / ".pwfile"
        pwfile.write_text(self.password + "\n")
        self.data.mkdir(mode=0o700, exist_ok=True)
        _chown_for_service(self.data)
        _chown_for_service(pwfile)
        try:
            _run(
                _as_service_user(
                    [
                        str(self.bindir / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "pantau",
                        f"--pwfile={pwfile}",
                        "--auth-local=scram-sha-256",
                        "--auth-host=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-instructions",
                    ]
                ),
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _write_config(self) -> None:
        template = (SHIPPED_DIR / "postgresql.conf").read_text()
        preload = (
            "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off" if self.timescaledb else ""
        )
        conf = template.format(host=self.host, port=self.port, socket_dir=self.data, timescaledb=preload)
        auto = self.data / "pantau.conf"
        auto.write_text(conf)
        _chown_for_service(auto)
        main = self.data / "postgresql.conf"
        text = main.read_text()
        if "include_if_exists = 'pantau.conf'" not in text:
            main.write_text(text + "\ninclude_if_exists = 'pantau.conf'\n")

    def running_pid(self) -> int | None:
        """PID of a live postmaster for this data directory, if any."""
        pidfile = self.data / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid = int(lines[0])
            os.kill(pid, 0)
            if len(lines) > 3:
                self.port = int(lines[3])
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        """Initialise if needed and start; waits until it accepts connections."""
        if not self.initialised():
            self.init()
        if self.running_pid() is not None:
            return  # left running by an earlier run that died: adopt it
        for _attempt in range(3):
            self.port = self.port or free_port()
            self._write_config()
            self.log_file.touch()
            _chown_for_service(self.log_file)
            proc = subprocess.run(
                _as_service_user(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log_file),
                        "-w",
                        "-t",
                        str(_START_TIMEOUT_S),
                        "start",
                    ]
                ),
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                self._create_database()
                return
            if "could not bind" in self.log_tail() or "already in use" in self.log_tail():
                self.port = 0  # someone took the port: pick another
                continue
            break
        raise EmbeddedServiceError(f"PostgreSQL did not start; see {self.log_file}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, mode: str = "fast") -> None:
        if self.running_pid() is None:
            return
        _run(
            _as_service_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            "pg_ctl stop",
        )

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class EmbeddedMosquitto:
    """A mosquitto broker in `root` with pantau's config from deploy/, run as a child process."""

    root: Path
    port: int = 0
    host: str = "127.0.0.1"
    # Accounts and ACLs (the dynamic-security plugin), anonymous access off, MAX_PACKET_BYTES.
    secure: bool = False
    # Secure only: the client id each service account is bound to, by account (pantau.broker).
    client_ids: dict[str, str] = field(default_factory=dict)
    # An mqtts:// listener on tls_port (0: a free one) with the operator's PEM files.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_port: int = 0

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.binary = mosquitto_binary()
        self.conf = self.root / "mosquitto.conf"
        self.log_file = self.root / "mosquitto.log"
        self.pid_file = self.root / "mosquitto.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self.plugin: Path | None = None
        if self.secure:
            from pantau.broker import dynsec_plugin_path

            self.plugin = dynsec_plugin_path()
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("PANTAU_MQTT_TLS_CERT_FILE", "a TLS listener needs both the certificate and its key file")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls_cert_file else None

    @property
    def accounts_file(self) -> Path:
        """The accounts' secrets (mode 0600): pantau.broker.AccountBook."""
        return self.root / "accounts.json"

    def accounts(self) -> AccountBook:
        """The secure broker's accounts (made on its first start)."""
        from pantau.broker import AccountBook

        book = AccountBook.load(self.accounts_file)
        if book is None:
            raise EmbeddedServiceError(f"no broker accounts in {self.accounts_file}: start the secure broker first")
        return book

    def _security(self, data: Path) -> str:
        if not self.secure:
            return "allow_anonymous true"
        from pantau.broker import ADMIN, AccountBook, initial_dynsec_config, write_secret

        book = AccountBook.load_or_create(self.accounts_file, self.client_ids)
        dynsec = data / "dynamic-security.json"
        if not dynsec.exists():  # the plugin keeps it from then on
            write_secret(dynsec, json.dumps(initial_dynsec_config(book[ADMIN]), indent=2) + "\n")
        return "\n".join(
            [
                f"plugin {self.plugin}",
                f"plugin_opt_config_file {dynsec}",
                "allow_anonymous false",
                f"max_packet_size {MAX_PACKET_BYTES}",
            ]
        )

    def _tls_listener(self) -> str:
        if not self.tls_cert_file:
            return ""
        files = (("PANTAU_MQTT_TLS_CERT_FILE", self.tls_cert_file), ("PANTAU_MQTT_TLS_KEY_FILE", self.tls_key_file))
        for key, path in files:
            if not os.path.isfile(path):
                raise ConfigError(key, f"no such file: {path}")
        self.tls_port = self.tls_port or free_port()
        return "\n".join(
            [
                f"listener {self.tls_port} {self.host}",
                f"certfile {Path(self.tls_cert_file).resolve()}",
                f"keyfile {Path(self.tls_key_file).resolve()}",
            ]
        )

    def _write_config(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        text = (
            (SHIPPED_DIR / "mosquitto.conf")
            .read_text()
            .format(
                persistence_dir=data,
                log_file=self.log_file,
                port=self.port,
                host=self.host,
                security=self._security(data),
                tls_listener=self._tls_listener(),
            )
        )
        if os.geteuid() == 0:
            # mosquitto drops root privileges to its own user; let that user keep its files.
            try:
                entry = pwd.getpwnam("mosquitto")
                _ensure_traversable(self.root)
                self.log_file.touch(exist_ok=True)
                for path in (data, self.log_file, *data.iterdir()):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
                text += "user mosquitto\n"
            except KeyError:
                text += "user root\n"
        self.conf.write_text(text)

    def _stop_stale(self) -> None:
        """Stop a broker an earlier run of ours left behind (by its recorded PID only)."""
        try:
            pid = int(self.pid_file.read_text())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            return
        if b"mosquitto" in cmdline and str(self.conf).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.05)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        for _attempt in range(3):
            self.port = self.port or free_port()
            self._write_config()
            self.proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent,  # SIGTERM saves its queue; the next run restarts it
            )
            self.pid_file.write_text(str(self.proc.pid))
            if self._wait_listening():
                return
            err = ""
            if self.proc.poll() is not None and self.proc.stderr:
                err = self.proc.stderr.read().decode(errors="replace")
            self.stop()
            if "in use" in err or "Address already" in err:
                self.port = 0
                continue
            raise EmbeddedServiceError(f"mosquitto did not start: {err.strip()} (log: {self.log_file})")
        raise EmbeddedServiceError("mosquitto did not start: no free port found")

    def _wait_listening(self, timeout_s: float = 10.0) -> bool:
        import socket

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistence file; SIGKILL does not)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        self.pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()


def running_stack_database_url(home: Path) -> str | None:
    """The database of the `pantau up` running on `home`, with its password (kept apart from
    endpoints.json, in the private cluster's own 0600 file), or None when no such stack is up:
    commands run beside `pantau up` find its database without anyone copying the password."""
    import json
    from urllib.parse import urlsplit, urlunsplit

    try:
        endpoints = json.loads((home / "endpoints.json").read_text())
        os.kill(int(endpoints["pid"]), 0)
        password = (home / "postgres" / "password").read_text().strip()
        parts = urlsplit(str(endpoints["database_url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if parts.password is not None or not parts.username or not parts.hostname:
        return None
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
