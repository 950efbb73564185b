"""Scriptable messenger commands: register, login, send, inbox, contacts, who.

Each command connects, does one thing and exits; ``inbox --follow`` stays. The user
name and hub address come from ``--user``/``--hub``, ``DUPLEX_CLIENT_USER``/``_HUB``, or
the ``[client]`` table of the config file. The password comes from a prompt or
``DUPLEX_PASSWORD``; after the first login a session token is kept in the user config
dir (mode 0600) so later commands need no password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from duplex.cli._common import DuplexGroup
from duplex.config import ClientConfig, config_file_path, resolve, user_config_dir
from duplex.errors import AuthError, DuplexError, RemoteError

__all__ = ["COMMANDS"]

F = TypeVar("F", bound=Callable[..., Any])


def client_options(func: F) -> F:
    """``--hub``, ``--user``, ``--tls``, ``--data-dir``, ``--config``, ``--json``."""
    options = [
        click.option(
            "--hub", default=None, metavar="HOST:PORT", help="The hub.  [default: 127.0.0.1:7070]"
        ),
        click.option("--user", "-u", default=None, help="Your user name (or DUPLEX_CLIENT_USER)."),
        click.option("--tls/--no-tls", default=None, help="TLS, pinning the hub on first use."),
        click.option(
            "--data-dir", default=None, metavar="DIR", help="Outbox and history (default: yours)."
        ),
        click.option(
            "--config", "config_path", default=None, metavar="FILE", help="TOML, [client] table."
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(kw: dict[str, Any], need_user: bool = True) -> ClientConfig:
    config = resolve(
        ClientConfig,
        section="client",
        flags={name: kw.pop(name) for name in ("hub", "user", "tls", "data_dir")},
        file=config_file_path(kw.pop("config_path")),
    )
    if need_user and not config.user:
        raise click.UsageError("who are you? give --user NAME (or set DUPLEX_CLIENT_USER)")
    return config


def _token_path(config: ClientConfig) -> Path:
    host, port = config.hub_address()
    return user_config_dir() / "tokens" / f"{config.user}@{host}_{port}"


def _load_token(config: ClientConfig) -> str:
    with contextlib.suppress(OSError):
        return _token_path(config).read_text().strip()
    return ""


def _save_token(config: ClientConfig, token: str) -> None:
    path = _token_path(config)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")


def _password(prompt: str = "Password", confirm: bool = False) -> str:
    env = os.environ.get("DUPLEX_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        raise click.UsageError("no password: set DUPLEX_PASSWORD or run in a terminal")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _run(coro: Awaitable[None]) -> None:
    try:
        asyncio.run(coro)  # type: ignore[arg-type]
    except AuthError as exc:
        raise click.ClickException(f"login refused: {exc.message}") from exc
    except RemoteError as exc:
        raise click.ClickException(f"the hub refused: {exc.message} ({exc.code})") from exc
    except DuplexError as exc:
        raise click.ClickException(str(exc)) from exc
    except TimeoutError as exc:
        raise click.ClickException("timed out waiting for the hub") from exc
    except KeyboardInterrupt:
        pass


def _pins() -> Any:
    from duplex.client.core import PinStore

    return PinStore(user_config_dir() / "known_hubs")


def _router(config: ClientConfig) -> Any:
    """The direct path, unless the configuration turns it off."""
    if not config.p2p:
        return None
    from duplex.p2p import DirectRouter

    return DirectRouter(identity_dir=config.data_path() / "p2p")


async def _client(
    config: ClientConfig, *, password: str | None = None, transient: bool = True
) -> Any:
    """A started client: the saved token, else the password (and a token saved).

    ``transient``: a one-shot command, which leaves the session of a client of the
    same device that runs meanwhile (duplex chat, inbox --follow) alone."""
    from duplex.client import Client

    token = _load_token(config)
    if not token and password is None:
        password = _password(f"Password for {config.user}")
    client = Client(
        config.hub_address(),
        config.user,
        password=password,
        token=token or None,
        data_dir=config.data_path(),
        tls=config.tls,
        pins=_pins(),
        want_token=True,
        router=_router(config),
        transient=transient,
    )
    await client.start()
    return client


def _unreachable(client: Any, config: ClientConfig) -> click.ClickException:
    why = f": {client.last_failure}" if client.last_failure else ""
    return click.ClickException(f"cannot reach the hub at {config.hub}{why}")


SAY_WAITING = 1.0
"""Seconds without the hub before a command says it waits (see :func:`_online`)."""


async def _online(client: Any, config: ClientConfig, timeout: float, flag: str = "") -> bool:
    """Waits to be logged in; saves a new token. False when the hub is unreachable.

    If the hub has not answered after :data:`SAY_WAITING` seconds, says so on stderr
    (why, and for how long it keeps trying: ``flag`` is the option that sets it)
    instead of sitting silent."""
    first = min(timeout, SAY_WAITING)
    try:
        try:
            await client.wait_online(first)
        except TimeoutError:
            if client.fatal or timeout <= first:
                raise
            why = f" ({client.last_failure})" if client.last_failure else ""
            click.echo(
                f"the hub at {config.hub} does not answer{why}; trying for "
                f"{timeout - first:g} s more" + (f" ({flag})" if flag else ""),
                err=True,
            )
            await client.wait_online(timeout - first)
    except TimeoutError:
        if client.fatal:
            raise AuthError("fatal", client.fatal) from None
        return False
    if client.token and client.token != _load_token(config):
        _save_token(config, client.token)
    return True


async def _finish(client: Any, wait: float = 5.0) -> None:
    """Lets queued messages go out (ours from earlier runs too), then closes."""
    try:
        if client.state == "online":
            left = await client.drain_outbox(wait)
            if left:
                click.echo(
                    f"{left} message(s) still queued; they go out at the next login", err=True
                )
    finally:
        await client.close()


def _fmt_time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------- commands


@click.command(
    "register", epilog="\b\nExample:\n  DUPLEX_PASSWORD=s3cret! duplex register --user alice"
)
@client_options
def register_cmd(as_json: bool, **kw: Any) -> None:
    """Create an account on the hub, then log in and keep a session token."""
    config = _config(kw)
    password = _password(f"New password for {config.user}", confirm=True)

    async def main() -> None:
        from duplex.client import register

        await register(config.hub_address(), config.user, password, tls=config.tls, pins=_pins())
        client = await _client(config, password=password)
        try:
            await _online(client, config, 10)
        finally:
            await _finish(client)
        click.echo(
            json.dumps({"registered": config.user}) if as_json else f"registered {config.user}"
        )

    _run(main())


@click.command("login", epilog="\b\nExample:\n  duplex login --user alice")
@client_options
def login_cmd(as_json: bool, **kw: Any) -> None:
    """Log in with your password and keep a session token for later commands."""
    config = _config(kw)
    password = _password(f"Password for {config.user}")

    async def main() -> None:
        from duplex.client import Client

        client = Client(
            config.hub_address(),
            config.user,
            password=password,
            data_dir=config.data_path(),
            tls=config.tls,
            pins=_pins(),
            want_token=True,
            transient=True,
        )
        await client.start()
        try:
            if not await _online(client, config, 10):
                raise _unreachable(client, config)
        finally:
            await _finish(client)
        click.echo(json.dumps({"user": config.user}) if as_json else f"logged in as {config.user}")

    _run(main())


@click.command("logout", epilog="\b\nExample:\n  duplex logout --user alice")
@client_options
def logout_cmd(as_json: bool, **kw: Any) -> None:
    """End the session at the hub and forget the saved token."""
    config = _config(kw)

    async def main() -> None:
        if not _load_token(config):
            click.echo("not logged in")
            return
        client = await _client(config)
        try:
            if await _online(client, config, 10):
                await client.logout()
        finally:
            await client.close()
        _token_path(config).unlink(missing_ok=True)
        click.echo("logged out")

    _run(main())


_PATHS = {
    "relayed": "relayed: the hub passed it on at once",
    "stored": "kept: the recipient is offline, the hub holds it until they are back",
    "direct": "direct: from this device to theirs, not through the hub",
}
"""How ``send`` explains each path of a message to a person (JSON gives the word)."""


@click.command(
    "send",
    epilog="\b\nExamples:\n  duplex send bob 'hello bob'\n  echo 'from a pipe' | duplex send bob -",
)
@click.argument("to")
@click.argument("text")
@click.option(
    "--wait",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for the hub to store it.",
)
@click.option(
    "--delivered",
    is_flag=True,
    help="Also wait (--wait) until the recipient's device has it; exit 4 if it did not.",
)
@client_options
def send_cmd(to: str, text: str, wait: float, delivered: bool, as_json: bool, **kw: Any) -> None:
    """Send TEXT to user TO ('-' reads the text from stdin).

    Exits 0 once the hub has stored the message durably, printing its id, path and
    state. If the hub cannot be reached, the message stays in your outbox (exit 3)
    and goes out the next time a duplex command logs in to that hub. With
    --delivered, exits 0 once a device of the recipient has it, and 4 if the hub
    stored it but no device took it within --wait (the hub keeps it for them).
    """
    config = _config(kw)
    if text == "-":
        text = sys.stdin.read().rstrip("\n")
    if not text:
        raise click.UsageError("empty message")

    async def main() -> None:
        client = await _client(config)
        try:
            msg_id = await client.send(to, text)
            online = await _online(client, config, wait, "--wait")
            state = "queued"
            if online:
                with contextlib.suppress(TimeoutError):
                    state = await client.wait_state(
                        msg_id, "delivered" if delivered else "stored", wait
                    )
            found = client.state_of(msg_id) or (state, None)
            state, path = found
            reason = ""
            if state == "failed":
                for event in client.pending_events():
                    if getattr(event, "id", None) == msg_id and getattr(event, "reason", ""):
                        reason = event.reason
        finally:
            await _finish(client)
        hexid = msg_id.hex()
        if as_json:
            click.echo(
                json.dumps({"id": hexid, "to": to, "state": state, "path": path, "reason": reason})
            )
        else:
            click.echo(f"{hexid}  to {to}  {state}" + (f" ({_PATHS[path]})" if path else ""))
        if state == "failed":
            raise click.ClickException(f"not sent: {reason}")
        if state == "queued":
            click.echo(
                f"the hub at {config.hub} did not confirm it; it stays in the outbox and "
                f"goes out at the next login to {config.hub}",
                err=True,
            )
            sys.exit(3)
        if delivered and state != "delivered":
            click.echo(
                f"no device of {to} took it within {wait:g} s; the hub keeps it until one does",
                err=True,
            )
            sys.exit(4)

    _run(main())


@click.command(
    "inbox",
    epilog="\b\nExamples:\n  duplex inbox            new messages, then exit\n"
    "  duplex inbox --follow   keep printing as they arrive",
)
@click.option("--follow", "-f", is_flag=True, help="Keep running and print messages as they come.")
@click.option(
    "--wait", type=float, default=10.0, show_default=True, help="Seconds to wait for the hub."
)
@client_options
def inbox_cmd(follow: bool, wait: float, as_json: bool, **kw: Any) -> None:
    """Print messages for you (each once), acking them to their senders."""
    config = _config(kw)

    async def main() -> None:
        from duplex.client import ConnectionStateChanged, MessageReceived, PresenceChanged

        client = await _client(config, transient=not follow)
        shown = False  # a message, printed

        def print_new() -> None:
            # From the local history, not from the events: a message that another
            # command's client received (and acked: its sender saw "delivered") is
            # printed here too, once.
            nonlocal shown
            lines = client.local.unprinted()
            for line in lines:
                if as_json:
                    row = {"from": line.peer, "id": line.id.hex(), "ts": line.ts}
                    row.update(path=line.path, text=line.body)
                    click.echo(json.dumps(row))
                else:
                    click.echo(f"[{_fmt_time(line.ts)}] {line.peer}: {line.body}")
            if lines:
                shown = True
                sys.stdout.flush()
                client.local.set_printed(lines[-1].n)

        def show(event: object) -> None:
            if isinstance(event, MessageReceived):
                print_new()
            elif follow and isinstance(event, PresenceChanged) and not as_json:
                click.echo(f"* {event.user} is {'online' if event.online else 'offline'}", err=True)
            elif follow and isinstance(event, ConnectionStateChanged) and not as_json:
                click.echo(f"* {event.state} {event.detail}".rstrip(), err=True)

        # A message is acked once it is in the local history, which is before it is
        # printed: on Ctrl-C or SIGTERM, print what has arrived, then stop.
        task = asyncio.current_task()
        assert task is not None
        stopped = False

        def stop() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                print_new()
                task.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            print_new()  # what earlier commands received, even with the hub away
            if not await _online(client, config, wait, "--wait"):
                raise _unreachable(client, config)
            target = client.hub_last_seq
            while True:
                try:
                    event = await client.next_event(None if follow else 0.5)
                except TimeoutError:
                    if client.local.last_seq >= target:
                        break
                    continue
                show(event)
                if not follow and client.local.last_seq >= target and not client.has_events():
                    break
            if not shown and not as_json:
                click.echo("no new messages", err=True)
        except asyncio.CancelledError:
            if not stopped:
                raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            print_new()  # (what arrives while the client closes waits for the next run)
            await _finish(client)

    _run(main())


@click.group(
    "contacts",
    cls=DuplexGroup,
    epilog="\b\nExamples:\n  duplex contacts add bob -u alice\n  duplex contacts ls -u alice",
)
def contacts_group() -> None:
    """Manage your contact list (presence goes to those who list you)."""


def _contacts_action(action: str) -> Callable[..., None]:
    def command(as_json: bool, contact: str | None = None, **kw: Any) -> None:
        config = _config(kw)

        async def main() -> None:
            client = await _client(config)
            try:
                if not await _online(client, config, 10):
                    raise _unreachable(client, config)
                if action == "add":
                    assert contact is not None
                    await client.add_contact(contact)
                    click.echo(f"added {contact}")
                elif action == "rm":
                    assert contact is not None
                    await client.remove_contact(contact)
                    click.echo(f"removed {contact}")
                else:
                    contacts = everyone = await client.contacts()
                    if action == "who":
                        contacts = [c for c in contacts if c.online]
                    if as_json:
                        click.echo(
                            json.dumps([{"user": c.user, "online": c.online} for c in contacts])
                        )
                    elif not everyone:
                        click.echo("no contacts yet: duplex contacts add NAME")
                    elif not contacts:
                        n = len(everyone)
                        click.echo(
                            f"none of your {n} contacts is online (duplex contacts ls)"
                            if n > 1
                            else "your contact is offline (duplex contacts ls)"
                        )
                    else:
                        for c in contacts:
                            click.echo(f"{c.user:<32} {'online' if c.online else 'offline'}")
            finally:
                await _finish(client)

        _run(main())

    return command


_add = click.argument("contact")(client_options(_contacts_action("add")))
_rm = click.argument("contact")(client_options(_contacts_action("rm")))
contacts_group.command("add", help="Add CONTACT (a user name) to your contacts.")(_add)
contacts_group.command("rm", help="Remove CONTACT from your contacts.")(_rm)
contacts_group.command("ls", help="List your contacts and whether they are online.")(
    client_options(_contacts_action("ls"))
)
who_cmd = click.command(
    "who",
    help="List your contacts who are online now.",
    epilog="\b\nExample:\n  duplex who --user alice",
)(client_options(_contacts_action("who")))


@click.command(
    "peers",
    epilog="\b\nExample:\n  duplex peers --user bob   (while bob runs duplex inbox -f)",
)
@client_options
def peers_cmd(as_json: bool, **kw: Any) -> None:
    """List the direct links your running client holds, with their socket pairs.

    A one-shot command holds no links of its own: this reads what the client you
    have running (duplex chat, or duplex inbox --follow) publishes in its data dir.
    """
    config = _config(kw)
    path = config.data_path() / "peers.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        raise click.ClickException(
            f"no client of {config.user} has run with the direct path ({path} is missing)"
        ) from None
    pid = int(state.get("pid", 0))
    alive = pid > 0 and Path(f"/proc/{pid}").exists()
    links = state.get("links", []) if alive else []
    if as_json:
        click.echo(
            json.dumps(
                {
                    "pid": pid if alive else None,
                    "endpoints": state.get("endpoints", []),
                    "links": links,
                }
            )
        )
        return
    if not alive:
        click.echo(f"no client of {config.user} is running (the last one was pid {pid})")
        return
    click.echo(f"client pid {pid}, listening on {', '.join(state.get('endpoints', [])) or '-'}")
    if not links:
        click.echo("no direct links")
    for link in links:
        click.echo(
            f"{link['peer']:<20} {link['direction']:<9} {link['pair']}  "
            f"sent {link['sent']}, received {link['received']}, unacked {link['unacked']}"
        )


COMMANDS = [
    register_cmd,
    login_cmd,
    logout_cmd,
    send_cmd,
    inbox_cmd,
    contacts_group,
    who_cmd,
    peers_cmd,
]
"""The commands this module adds to ``duplex``."""
