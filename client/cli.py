"""The `evstore` command line.

Exit codes: 0 ok, 1 the server refused (or verify found corruption), 2 bad usage or input,
3 no connection to the node.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import click

from . import output, protocol
from .async_client import DEFAULT_URL
from .errors import ConnectionFailed, EvstoreError
from .events_file import EventsFileError, batched, read_events
from .protocol import parse_expected_version
from .sync_client import EvstoreClient

MAX_BATCH = 1000
EXIT_SERVER = 1
EXIT_CONNECTION = 3


@dataclass
class Settings:
    url: str
    token: str | None
    as_json: bool = False
    _client: EvstoreClient | None = field(default=None, repr=False)

    def client(self) -> EvstoreClient:
        if self._client is None:
            # exact: what the CLI prints of a reply keeps each number as the node sent it (1.50, 1E2)
            self._client = EvstoreClient(self.url, token=self.token, exact_numbers=True)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class EvstoreGroup(click.Group):
    """Turns client errors into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConnectionFailed as exc:
            click.echo(output.error_line(exc), err=True)
            ctx.exit(EXIT_CONNECTION)
        except EvstoreError as exc:
            click.echo(output.error_line(exc), err=True)
            ctx.exit(EXIT_SERVER)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--json` after the command name too (`evstore read s --json` as well as `evstore --json read s`)."""

    def enable(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Settings).as_json = True

    return click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=enable,
                        help="Machine output: each server reply as one JSON line.")(command)


def expected_version_option(default: str | None) -> Callable[..., Any]:
    def convert(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse_expected_version(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option("--expected-version", default=default, callback=convert,
                        metavar="any|no_stream|stream_exists|N", show_default=default is not None,
                        help="Fail with wrong_expected_version unless the stream is at this version.")


def json_argument(text: str | None, name: str, *, exact: bool = False) -> Any:
    """The JSON of an option, parsed; `exact`: numbers kept as written (what is sent on, see loads_exact)."""
    if text is None:
        return None
    try:
        return protocol.loads_exact(text) if exact else json.loads(text, parse_constant=protocol.refuse_constant)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg} at column {exc.colno}", param_hint=name) from None
    except ValueError as exc:  # NaN or Infinity
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None


def raw_json_argument(text: str | None, name: str, *, object_only: bool = False) -> protocol.RawJSON | None:
    """An option's JSON text, checked, to be sent exactly as typed (the server stores it so)."""
    value = json_argument(text, name, exact=True)
    if text is not None and object_only and not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=name)
    return None if text is None else protocol.RawJSON(text)


def emit_json(value: Any) -> None:
    click.echo(output.to_json(value))


def node_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """An http(s) URL with a host and a valid port, or bad usage (exit 2)."""
    try:
        return protocol.check_node_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=EvstoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="EVSTORE_URL", default=DEFAULT_URL, show_default=True, callback=node_url,
              help="Node URL (env EVSTORE_URL).")
@click.option("--token", envvar="EVSTORE_TOKEN", default=None, help="Bearer token (env EVSTORE_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Machine output: each server reply as one JSON line.")
@click.version_option(package_name="evstore", prog_name="evstore")
@click.pass_context
def cli(ctx: click.Context, url: str, token: str | None, as_json: bool) -> None:
    """evstore: an event store for event sourcing."""
    settings = Settings(url=url, token=token or None, as_json=as_json)
    ctx.obj = settings
    ctx.call_on_close(settings.close)


pass_settings = click.make_pass_decorator(Settings)


# -- serve / bench / operator: thin forwards to their owners ---------------------------------

FORWARD = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@cli.command(context_settings=FORWARD, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Run a node (flags as in the settings table: --data-dir, --port, ...; --help for all)."""
    from evstore.node.app import main as node_main

    sys.exit(node_main(list(args)))


@cli.command(context_settings=FORWARD, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the append/read benchmark; with --cluster N, single node vs N-node cluster and failover; with
    --subscriptions, catch-up, live delivery, idle subscribers and a persistent subscription (--help for the
    options of each)."""
    if any(a == "--cluster" or a.startswith("--cluster=") for a in args):
        from .bench.cluster import main as bench_main
    elif "--subscriptions" in args:
        from .bench.subscribe import main as bench_main
        args = tuple(a for a in args if a != "--subscriptions")
    else:
        from .bench.append import main as bench_main

    sys.exit(bench_main(list(args)))


@cli.command()
@click.option("--namespace", default=None, help="Watch one namespace (default: all namespaces).")
@click.option("--metrics-port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--verbose", is_flag=True)
def operator(namespace: str | None, metrics_port: int, verbose: bool) -> None:
    """Run the Kubernetes operator."""
    try:
        from evstore.operator.main import run
    except ModuleNotFoundError as exc:
        if exc.name in ("kopf", "kubernetes_asyncio"):
            raise click.ClickException("the operator needs its extras: pip install 'evstore[operator]'") from None
        raise

    result = run(namespace=namespace, metrics_port=metrics_port, verbose=verbose)
    if isinstance(result, int):
        sys.exit(result)


# -- streams ----------------------------------------------------------------------------------

@cli.command()
@click.argument("stream")
@click.option("--type", "event_type", help="Event type (one event).")
@click.option("--data", "data_text", help="Event data as JSON (one event; default {}).")
@click.option("--metadata", "metadata_text", help="Event metadata as a JSON object (one event).")
@click.option("--id", "event_id", help="Event id (one event; default: a new UUIDv7).")
@click.option("--file", "file_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="JSON Lines of {\"type\", \"data\", \"metadata\"?, \"id\"?}; - reads stdin.")
@expected_version_option("any")
@click.option("--batch-size", default=MAX_BATCH, show_default=True, type=click.IntRange(1, 10_000),
              help="Events per request with --file.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
@pass_settings
def append(settings: Settings, stream: str, event_type: str | None, data_text: str | None,
           metadata_text: str | None, event_id: str | None, file_path: str | None, expected_version: Any,
           batch_size: int, no_progress: bool) -> None:
    """Append one event (--type/--data) or a JSON Lines file (--file) to STREAM."""
    single = any(v is not None for v in (event_type, data_text, metadata_text, event_id))
    if file_path is not None and single:
        raise click.UsageError("give either --file or --type/--data/--metadata/--id, not both")
    if file_path is None:
        if event_type is None:
            raise click.UsageError("give --type (with --data) for one event, or --file for many")
        append_one(settings, stream, event_type, data_text, metadata_text, event_id, expected_version)
    else:
        append_file(settings, stream, file_path, expected_version, batch_size,
                    show_progress=not (no_progress or settings.as_json))


def append_one(settings: Settings, stream: str, event_type: str, data_text: str | None,
               metadata_text: str | None, event_id: str | None, expected_version: Any) -> None:
    data = raw_json_argument(data_text, "--data")
    event: dict[str, Any] = {"type": event_type, "data": {} if data is None else data}
    metadata = raw_json_argument(metadata_text, "--metadata", object_only=True)
    if metadata is not None:
        event["metadata"] = metadata
    if event_id:
        event["id"] = event_id
    reply = settings.client().append(stream, [event], expected_version=expected_version)
    click.echo(output.to_json(reply) if settings.as_json else output.append_result(reply))


def count_events_in_file(path: str) -> int:
    """Checks every line before anything is sent, so a bad file changes nothing; returns the count."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in read_events(f))


def append_file(settings: Settings, stream: str, path: str, expected_version: Any, batch_size: int,
                show_progress: bool) -> None:
    from tqdm import tqdm

    total: int | None = None
    try:
        if path != "-":
            total = count_events_in_file(path)
    except EventsFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--file") from None
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}", param_hint="--file") from None

    client = settings.client()
    sent = requests = 0
    reply: dict | None = None
    bar = None
    source = sys.stdin if path == "-" else open(path, encoding="utf-8")
    try:
        for index, batch in enumerate(batched(read_events(source), batch_size)):
            many = index >= 1 or (total is not None and total > batch_size)
            if show_progress and bar is None and many:
                bar = tqdm(total=total, initial=sent, unit="ev", desc=stream, file=sys.stderr, leave=False)
            reply = client.append(stream, batch, expected_version=expected_version)
            sent += len(batch)
            requests += 1
            if bar is not None:
                bar.update(len(batch))
            if expected_version != "any":
                # keep later batches exclusive: each must land right after the previous one
                expected_version = reply["version"]
            if settings.as_json:
                emit_json(reply)
    except EventsFileError as exc:
        raise click.BadParameter(f"{exc} ({sent} events before it were appended)", param_hint="--file") from None
    finally:
        if bar is not None:
            bar.close()
        if source is not sys.stdin:
            source.close()
    if not settings.as_json:
        click.echo(output.append_summary(stream, sent, requests, reply))


@cli.command()
@click.argument("stream")
@click.option("--from", "start", type=click.IntRange(min=1), help="First version (or $all position).")
@click.option("--limit", type=click.IntRange(1, 4096), help="Events per page (server default 100).")
@click.option("--backward", is_flag=True, help="Newest first.")
@click.option("--all-pages", is_flag=True, help="Follow `next` until the end.")
@click.option("--type", "types", multiple=True, help="$all only: event type (repeatable, OR).")
@click.option("--type-prefix", help="$all only: event type prefix.")
@click.option("--stream-prefix", help="$all only: stream name prefix.")
@click.option("--stream-pattern", help="$all only: stream name glob.")
@json_option
@pass_settings
def read(settings: Settings, stream: str, start: int | None, limit: int | None, backward: bool,
         all_pages: bool, types: tuple[str, ...], type_prefix: str | None, stream_prefix: str | None,
         stream_pattern: str | None) -> None:
    """Read STREAM, or every stream with `$all` (quote it in the shell: '$all')."""
    client = settings.client()
    filters = bool(types or type_prefix or stream_prefix or stream_pattern)
    if stream != "$all" and filters:
        raise click.UsageError("--type, --type-prefix, --stream-prefix and --stream-pattern apply to '$all' only")
    if not all_pages:
        if stream == "$all":
            page = client.read_all(from_position=start, limit=limit, backward=backward, types=list(types) or None,
                                   type_prefix=type_prefix, stream_prefix=stream_prefix,
                                   stream_pattern=stream_pattern)
        else:
            page = client.read_stream(stream, from_version=start, limit=limit, backward=backward)
        click.echo(output.to_json(page) if settings.as_json else output.stream_page(page))
        return
    if stream == "$all":
        pages: Iterator[dict] = client.iter_all_pages(
            from_position=start, page_size=limit, backward=backward, types=list(types) or None,
            type_prefix=type_prefix, stream_prefix=stream_prefix, stream_pattern=stream_pattern)
    else:
        pages = client.iter_stream_pages(stream, from_version=start, page_size=limit, backward=backward)
    printed_header = False
    for page in pages:
        if settings.as_json:
            emit_json(page)
        elif page.get("events"):
            text = output.events_table(page["events"])
            click.echo(text if not printed_header else text.split("\n", 1)[1])
            printed_header = True
    if not settings.as_json and not printed_header:
        click.echo(output.events_table([]))


@cli.command()
@click.option("--prefix", help="Only streams whose name starts with this.")
@click.option("--limit", type=click.IntRange(min=1), help="Streams per page.")
@click.option("--after", help="Start after this stream name (from `next`).")
@json_option
@pass_settings
def streams(settings: Settings, prefix: str | None, limit: int | None, after: str | None) -> None:
    """List streams in name order."""
    reply = settings.client().list_streams(prefix=prefix, after=after, limit=limit)
    click.echo(output.to_json(reply) if settings.as_json else output.streams_table(reply))


@cli.command()
@click.argument("stream", required=False)
@json_option
@pass_settings
def info(settings: Settings, stream: str | None) -> None:
    """Stream info for STREAM, or the node and cluster summary without one."""
    client = settings.client()
    if stream is not None:
        reply = client.stream_info(stream)
        click.echo(output.to_json(reply) if settings.as_json else output.stream_info(reply))
        return
    node, cluster = client.info(), client.cluster()
    click.echo(output.to_json({"info": node, "cluster": cluster}) if settings.as_json
               else output.node_info(node, cluster))


@cli.command()
@click.argument("stream")
@click.option("--hard", is_flag=True, help="Tombstone: the name can never be used again.")
@expected_version_option(None)
@json_option
@pass_settings
def delete(settings: Settings, stream: str, hard: bool, expected_version: Any) -> None:
    """Delete STREAM (soft by default: reads 404 until appended to again)."""
    settings.client().delete_stream(stream, expected_version=expected_version, hard=hard)
    click.echo(output.to_json({"stream": stream, "deleted": "hard" if hard else "soft"}) if settings.as_json
               else output.deleted(stream, hard))


@cli.command("append-many")
@click.option("--file", "file_path", required=True, type=click.File("r", encoding="utf-8"),
              help="JSON: {\"appends\": [{\"stream\", \"expectedVersion\"?, \"events\"}]} or just that list; "
                   "- reads stdin.")
@json_option
@pass_settings
def append_many(settings: Settings, file_path: Any) -> None:
    """Append to several streams atomically: all entries or none, at contiguous positions."""
    doc = json_argument(file_path.read(), "--file", exact=True)
    entries = doc.get("appends") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "stream" in e and "events" in e
                                                for e in entries):
        raise click.BadParameter("expected {\"appends\": [{\"stream\", \"events\", \"expectedVersion\"?}]}",
                                 param_hint="--file")
    reply = settings.client().append_many(entries)
    if settings.as_json:
        emit_json(reply)
        return
    click.echo("\n".join(output.append_result(r) for r in reply["results"]))


# -- snapshots ------------------------------------------------------------------------------

@cli.group()
def snapshot() -> None:
    """Snapshots of sources (aggregates): save, read, list, delete."""


@snapshot.command("put")
@click.argument("source")
@click.option("--version", "version", required=True, type=click.IntRange(min=0),
              help="The version of SOURCE the snapshot is of.")
@click.option("--type", "snapshot_type", required=True, help="Snapshot type.")
@click.option("--data", "data_text", help="Snapshot data as JSON (default null).")
@click.option("--data-file", type=click.File("rb"), help="Snapshot data as raw bytes from a file (- reads stdin).")
@click.option("--metadata", "metadata_text", help="Metadata as a JSON object.")
@click.option("--keep", type=click.IntRange(min=1), help="From now on keep only the latest N snapshots of SOURCE.")
@json_option
@pass_settings
def snapshot_put(settings: Settings, source: str, version: int, snapshot_type: str, data_text: str | None,
                 data_file: Any, metadata_text: str | None, keep: int | None) -> None:
    """Save a snapshot of SOURCE at --version (one saved at that version before is replaced)."""
    if data_text is not None and data_file is not None:
        raise click.UsageError("give --data or --data-file, not both")
    data = data_file.read() if data_file is not None else raw_json_argument(data_text, "--data")
    metadata = raw_json_argument(metadata_text, "--metadata", object_only=True)
    reply = settings.client().save_snapshot(source, version=version, type=snapshot_type, data=data,
                                            metadata=metadata, keep=keep)
    click.echo(output.to_json(reply) if settings.as_json
               else f"saved snapshot of {source} at version {reply['version']}, position {reply['position']}")


@snapshot.command("get")
@click.argument("source")
@click.option("--max-version", type=click.IntRange(min=0), help="The latest at or below this version.")
@click.option("--all", "every", is_flag=True, help="Every snapshot of SOURCE, in version order.")
@json_option
@pass_settings
def snapshot_get(settings: Settings, source: str, max_version: int | None, every: bool) -> None:
    """The latest snapshot of SOURCE (or every one with --all)."""
    client = settings.client()
    if not every:
        found = client.read_snapshot(source, max_version=max_version)
        click.echo(output.to_json(found) if settings.as_json else output.key_values(
            [(key, found.get(key)) for key in ("source", "version", "type", "created", "position", "data",
                                               "dataBase64", "metadata", "metadataBase64") if key in found]))
        return
    snapshots = list(client.iter_snapshots(source, max_version=max_version))
    if settings.as_json:
        for found in snapshots:
            emit_json(found)
        return
    click.echo(output.table(["VERSION", "TYPE", "CREATED", "POSITION", "DATA"],
                            [(f["version"], f["type"], f["created"], f["position"],
                              output.compact(f.get("data", f.get("dataBase64")))) for f in snapshots])
               if snapshots else "(no snapshots)")


@snapshot.command("list")
@click.option("--prefix", help="Only sources whose name starts with this.")
@click.option("--after", help="Start after this source (from `next`).")
@click.option("--limit", type=click.IntRange(1, 1000), help="Sources per page.")
@json_option
@pass_settings
def snapshot_list(settings: Settings, prefix: str | None, after: str | None, limit: int | None) -> None:
    """Sources with snapshots, in name order, with their latest snapshot."""
    reply = settings.client().list_snapshots(prefix=prefix, after=after, limit=limit)
    if settings.as_json:
        emit_json(reply)
        return
    rows = [(s["source"], s["version"], s["type"], s["created"]) for s in reply["snapshots"]]
    lines = [output.table(["SOURCE", "VERSION", "TYPE", "CREATED"], rows) if rows else "(no snapshots)"]
    if reply.get("next") is not None:
        lines.append(f"more: --after {reply['next']}")
    click.echo("\n".join(lines))


@snapshot.command("delete")
@click.argument("source")
@json_option
@pass_settings
def snapshot_delete(settings: Settings, source: str) -> None:
    """Delete every snapshot of SOURCE."""
    settings.client().delete_snapshot(source)
    click.echo(output.to_json({"source": source, "deleted": True}) if settings.as_json
               else f"deleted the snapshots of {source}")


# -- subscriptions --------------------------------------------------------------------------

def parse_start(text: str) -> str | int:
    text = text.strip()
    if text in protocol.SUBSCRIBE_STARTS:
        return text
    if text.isdigit():
        return int(text)
    raise click.BadParameter("must be start, end or a position (an integer >= 0)")


def start_option(name: str, help_text: str) -> Callable[..., Any]:
    def convert(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        return None if value is None else parse_start(value)

    return click.option(name, "start", default=None, callback=convert, metavar="start|end|POSITION", help=help_text)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
            click.option("--type", "types", multiple=True, help="Event type (repeatable, OR)."),
            click.option("--type-prefix", help="Event type prefix."),
            click.option("--stream-prefix", help="Stream name prefix."),
            click.option("--stream-pattern", help="Stream name glob, e.g. 'order-*'.")]):
        command = option(command)
    return command


def delivery_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
            click.option("--buffer-size", type=click.IntRange(min=1), help="Un-acked events per consumer."),
            click.option("--ack-timeout", type=click.FloatRange(min=0, min_open=True),
                         help="Seconds before an un-acked event is delivered again."),
            click.option("--max-retries", type=click.IntRange(min=0), help="Deliveries before an event is parked."),
            click.option("--concurrency-limit", type=click.IntRange(min=1), help="Consumers at once."),
            click.option("--partition-by", type=click.Choice(protocol.PARTITIONS),
                         help="stream: one stream's events to one consumer at a time, in order.")]):
        command = option(command)
    return command


@cli.command()
@start_option("--from", "Where to start: start (the whole log), end (default: what commits from now on) or a "
                        "$all position (inclusive).")
@click.option("--from-version", type=click.IntRange(min=1), help="With --stream: from this stream version.")
@click.option("--stream", help="Only this stream.")
@filter_options
@click.option("--payload", "payload_text", metavar="JSON", help="Only events whose data contains this JSON object.")
@click.option("--include-system", is_flag=True, help="Also $-streams (metadata, checkpoints, snapshots).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--no-follow", is_flag=True, help="Stop once caught up instead of following new events.")
@json_option
@pass_settings
def subscribe(settings: Settings, start: str | int | None, from_version: int | None, stream: str | None,
              types: tuple[str, ...], type_prefix: str | None, stream_prefix: str | None,
              stream_pattern: str | None, payload_text: str | None, include_system: bool, count: int | None,
              no_follow: bool) -> None:
    """Follow the store live: print each event as it commits (one JSON object per line with --json).

    Select with one of --stream, --type (repeatable), --type-prefix, --stream-prefix, --stream-pattern or
    --payload (none: every event). A dropped connection is resumed where it stopped. Ctrl-C stops."""
    payload = json_argument(payload_text, "--payload")
    if payload is not None and not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    if from_version is not None and start is not None:
        raise click.UsageError("give either --from or --from-version, not both")
    if from_version is not None and stream is None:
        raise click.UsageError("--from-version needs --stream")
    selectors = [name for name, value in (("--stream", stream), ("--type", types), ("--type-prefix", type_prefix),
                                          ("--stream-prefix", stream_prefix), ("--stream-pattern", stream_pattern),
                                          ("--payload", payload)) if value]
    if len(selectors) > 1:
        raise click.UsageError(f"give one selector, not {' and '.join(selectors)}")
    try:
        subscription = settings.client().subscribe(
            stream=stream, types=list(types) or None, type_prefix=type_prefix, stream_prefix=stream_prefix,
            stream_pattern=stream_pattern, payload=payload, include_system=include_system,
            from_version=from_version, from_position=start if isinstance(start, int) else None,
            start=start if isinstance(start, str) else None, include_control=True)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    seen = 0
    try:
        with subscription:
            for message in subscription:
                event = message.get("event")
                if isinstance(event, dict):
                    click.echo(output.to_json(event) if settings.as_json else output.event_line(event))
                    seen += 1
                    if count is not None and seen >= count:
                        return
                elif message.get("caughtUp") is True:
                    if not settings.as_json:
                        click.echo(output.caught_up(message.get("position"), follow=not no_follow), err=True)
                    if no_follow:
                        return
    except KeyboardInterrupt:
        return


@cli.group()
def subscriptions() -> None:
    """Persistent subscriptions: server-side checkpoint, acks, competing consumers, parked events."""


@subscriptions.command("create")
@click.argument("name")
@click.option("--stream", help="The events of this stream (else the filter options; none: every event).")
@filter_options
@start_option("--start-from", "Where delivery starts: start, end or a $all position (left out: the "
                              "server's default).")
@delivery_options
@json_option
@pass_settings
def subscriptions_create(settings: Settings, name: str, stream: str | None, types: tuple[str, ...],
                         type_prefix: str | None, stream_prefix: str | None, stream_pattern: str | None,
                         start: str | int | None, **delivery: Any) -> None:
    """Create persistent subscription NAME (again with the same settings: nothing changes)."""
    selected = protocol.all_filter(types=types, type_prefix=type_prefix, stream_prefix=stream_prefix,
                                   stream_pattern=stream_pattern)
    if stream is not None and selected:
        raise click.UsageError("give either --stream or the filter options, not both")
    reply = settings.client().create_subscription(name, stream=stream, filter=None if stream else selected,
                                                  start_from=start, **delivery)
    asked = {"stream": stream} if stream else {"filter": selected}
    if start is not None:
        asked["startFrom"] = start
    click.echo(output.to_json(reply) if settings.as_json
               else output.subscription_created(name, {**asked, **(reply if isinstance(reply, dict) else {})}))


@subscriptions.command("update")
@click.argument("name")
@delivery_options
@json_option
@pass_settings
def subscriptions_update(settings: Settings, name: str, **delivery: Any) -> None:
    """Change delivery settings of NAME (only those given); its checkpoint is kept."""
    if all(v is None for v in delivery.values()):
        raise click.UsageError("give at least one setting to change")
    reply = settings.client().update_subscription(name, **delivery)
    changes = protocol.delivery_settings(**delivery)
    click.echo(output.to_json(reply) if settings.as_json else output.subscription_updated(name, changes))


@subscriptions.command("list")
@json_option
@pass_settings
def subscriptions_list(settings: Settings) -> None:
    """Every persistent subscription with its checkpoint, lag, in-flight and parked counts."""
    reply = settings.client().list_subscriptions()
    click.echo(output.to_json(reply) if settings.as_json else output.subscriptions_table(reply))


@subscriptions.command("info")
@click.argument("name")
@json_option
@pass_settings
def subscriptions_info(settings: Settings, name: str) -> None:
    """Settings and stats of NAME: checkpoint, head, lag, inFlight, parked, consumers."""
    reply = settings.client().get_subscription(name)
    click.echo(output.to_json(reply) if settings.as_json else output.subscription_info(reply))


@subscriptions.command("delete")
@click.argument("name")
@json_option
@pass_settings
def subscriptions_delete(settings: Settings, name: str) -> None:
    """Delete NAME; its connected consumers are closed."""
    settings.client().delete_subscription(name)
    click.echo(output.to_json({"subscription": name, "deleted": True}) if settings.as_json
               else output.subscription_done(name, "deleted", None))


@subscriptions.command("parked")
@click.argument("name")
@json_option
@pass_settings
def subscriptions_parked(settings: Settings, name: str) -> None:
    """The parked events of NAME (delivered maxRetries times, or nacked with park)."""
    reply = settings.client().parked(name)
    click.echo(output.to_json(reply) if settings.as_json else output.parked_events(reply))


@subscriptions.command("replay")
@click.argument("name")
@json_option
@pass_settings
def subscriptions_replay(settings: Settings, name: str) -> None:
    """Deliver NAME's parked events again (its checkpoint does not move)."""
    reply = settings.client().replay_parked(name)
    click.echo(output.to_json(reply) if settings.as_json
               else output.subscription_done(name, "replaying parked events", reply))


# -- verify -----------------------------------------------------------------------------------

@cli.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False),
              help="Check a data directory offline (no server). Without it, ask the node at --url.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
@pass_settings
def verify(settings: Settings, data_dir: str | None, no_progress: bool) -> None:
    """Checksum every record; exit 1 when anything is corrupt."""
    if data_dir is not None:
        try:
            result = verify_offline(data_dir, show_progress=not (no_progress or settings.as_json))
        except FileNotFoundError as exc:
            raise click.BadParameter(str(exc), param_hint="--data") from None
    else:
        result = settings.client().verify()
    click.echo(output.to_json(result) if settings.as_json else output.verify_result(result))
    if result.get("corrupt") or result.get("error"):
        sys.exit(1)


def verify_offline(data_dir: str, show_progress: bool) -> dict:
    from tqdm import tqdm

    from evstore.node.verify import verify_data_dir

    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if not show_progress:
            return
        if bar is None:
            bar = tqdm(total=total, unit="rec", desc="verify", file=sys.stderr, leave=False)
        bar.total = total
        bar.update(done - bar.n)

    try:
        return verify_data_dir(data_dir, progress=progress)
    finally:
        if bar is not None:
            bar.close()


# -- check / dev-cluster ----------------------------------------------------------------------

@cli.command()
@click.option("--node", "nodes", multiple=True, metavar="URL",
              help="A node to check (repeat for every node of the cluster; default --url).")
@click.option("--converge-timeout", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait for every node's $all head to agree before reading.")
@json_option
@pass_settings
def check(settings: Settings, nodes: tuple[str, ...], converge_timeout: float) -> None:
    """Prove the nodes hold the same gap-free log: $all and every stream, read from every node.

    Exit 0 when consistent, 1 when anything is wrong (each problem is listed), 3 when no node answers. It
    assumes no scavenge ran: a scavenge removes events by design, and their positions show as gaps."""
    import asyncio

    from .harness.checker import check_cluster

    urls = [u.rstrip("/") for u in nodes] or [settings.url.rstrip("/")]
    report = asyncio.run(check_cluster(urls, converge_timeout=converge_timeout, token=settings.token))
    click.echo(output.to_json(report.to_dict()) if settings.as_json else report.summary())
    if not report.ok:
        sys.exit(EXIT_SERVER)


@cli.command("dev-cluster")
@click.option("--nodes", "size", default=3, show_default=True, type=click.IntRange(1, 9), help="How many nodes.")
@click.option("--dir", "base_dir", type=click.Path(file_okay=False),
              help="Data directory (default: a temporary one, removed at exit).")
@click.option("--keep", is_flag=True, help="Keep the temporary data directory at exit.")
@click.option("--store-id", default="dev", show_default=True, help="Store id of the cluster.")
def dev_cluster(size: int, base_dir: str | None, keep: bool, store_id: str) -> None:
    """Run a local cluster on 127.0.0.1 (an etcd and NODES nodes) until Ctrl-C."""
    import shutil
    import signal
    import tempfile
    import threading
    from pathlib import Path

    from .harness.localcluster import LocalCluster
    from .harness.localetcd import EtcdNotFound, etcd_binary

    try:
        etcd_binary()
    except EtcdNotFound as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)

    temporary = base_dir is None
    directory = Path(tempfile.mkdtemp(prefix="evstore-dev-") if temporary else base_dir)
    cluster = LocalCluster(directory, nodes=size, store_id=store_id, new_session=True)
    stopping = threading.Event()
    starting = True

    def on_signal(_signum: int, _frame: Any) -> None:
        stopping.set()
        if starting:
            raise KeyboardInterrupt  # abandon the start; the finally below stops what was started

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(f"starting etcd and {size} node{'s' if size != 1 else ''} in {directory} ...")
        try:
            cluster.start()
        except (RuntimeError, TimeoutError) as exc:
            click.echo(f"error: the cluster did not start: {exc}", err=True)
            sys.exit(EXIT_SERVER)
        click.echo(f"etcd:   {cluster.etcd_endpoints[0]}")
        for i, node in enumerate(cluster.nodes):
            click.echo(f"{cluster.node_id(i)}:  {node.url}")
        try:
            index, epoch = cluster.wait_leader(timeout=30.0)
            click.echo(f"leader: {cluster.node_id(index)} (epoch {epoch})")
        except TimeoutError as exc:
            click.echo(f"warning: {exc}", err=True)
        click.echo(f"try:    evstore --url {cluster.urls[0]} info")
        click.echo("Ctrl-C stops the cluster.")
        starting = False
        exited: set[int] = set()
        while not stopping.wait(1.0):
            for i, node in enumerate(cluster.nodes):
                code = node.proc.poll() if node.proc is not None else None
                if code is not None and i not in exited:
                    exited.add(i)
                    click.echo(f"warning: {cluster.node_id(i)} exited with code {code} (log: {node.log_path})",
                               err=True)
    except KeyboardInterrupt:
        pass
    finally:
        starting = False
        click.echo("stopping ...")
        cluster.stop(graceful=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if temporary and not keep:
            shutil.rmtree(directory, ignore_errors=True)
        elif temporary:
            click.echo(f"data kept in {directory}")
    click.echo("stopped")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="evstore")


if __name__ == "__main__":
    main()
