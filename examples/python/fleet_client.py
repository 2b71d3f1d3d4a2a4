#!/usr/bin/env python3
"""A small client of the Kairos Fleet public gRPC API (kairos.fleet.v1).

It speaks to a control-plane replica over TLS, trusting only the cluster CA
(`ca.pem` in the folder `kairos-controlplane init` wrote), and authenticates
with an operator token (`kft_...`) sent as `authorization: Bearer` metadata.

    fleet_client.py --server 127.0.0.1:7001 --ca-file fleet/ca.pem \
        --token-file fleet/admin.token nodes
    fleet_client.py ... create --to v2.4.3 --flavor ubuntu -l site=berlin
    fleet_client.py ... watch ro-000001 --until paused
    fleet_client.py ... pause ro-000001 --reason "canary looks slow"

The Python stubs are generated from the .proto files with grpc_tools.protoc
on first use, into a folder keyed by the protos' contents (see --stubs-dir),
so they always match the API the script is run against.

Exit codes follow kairosctl: 0 ok, 2 invalid input, 3 not found, 4 not
authenticated or role too low, 5 no replica reachable, 6 the watched
rollout was aborted, 1 anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import grpc
from google.protobuf import json_format

SCRIPT_DIR = Path(__file__).resolve().parent
# proto/ of the repository this example lives in.
DEFAULT_PROTO_DIR = SCRIPT_DIR.parent.parent / "proto"
PROTO_PACKAGE_DIR = Path("kairos") / "fleet" / "v1"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_ABORTED = 6

# Phases after which a rollout changes no more (ABORTED and COMPLETED only
# until someone rolls them back; a watch stops there all the same).
TERMINAL_PHASES = ("completed", "aborted", "rolled-back")

PHASE_NAMES = (
    "pending",
    "running",
    "baking",
    "waiting-window",
    "awaiting-approval",
    "paused",
    "aborted",
    "rolling-back",
    "completed",
    "rolled-back",
)


class UsageError(Exception):
    """Bad input from the command line or a file it names; exit code 2."""


class StubsError(Exception):
    """The stubs could not be generated; exit code 1."""


# --------------------------------------------------------------------------
# Stubs


class Stubs(NamedTuple):
    """The generated modules this script uses."""

    common: ModuleType
    fleet: ModuleType
    fleet_grpc: ModuleType
    rollout: ModuleType
    rollout_grpc: ModuleType


def proto_files(proto_dir: Path) -> list[Path]:
    """The public API's .proto files, relative to `proto_dir`, sorted."""
    package = proto_dir / PROTO_PACKAGE_DIR
    files = sorted(p.relative_to(proto_dir) for p in package.glob("*.proto"))
    if not files:
        raise UsageError(f"no .proto files in {package}: pass --proto-dir pointing at the repository's proto/")
    return files


def stubs_key(proto_dir: Path, files: Sequence[Path]) -> str:
    """A digest of the protos and the generator's version: stubs generated
    for one key never need regenerating."""
    digest = hashlib.sha256()
    try:
        tools_version = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError as e:
        raise StubsError(
            "grpcio-tools is not installed: pip install -r examples/python/requirements.txt"
        ) from e
    digest.update(tools_version.encode())
    digest.update(grpc.__version__.encode())
    for rel in files:
        digest.update(str(rel).encode() + b"\0")
        digest.update((proto_dir / rel).read_bytes())
    return digest.hexdigest()[:16]


def generate_stubs(proto_dir: Path, files: Sequence[Path], out_dir: Path) -> None:
    """Runs `python -m grpc_tools.protoc` (which adds the well-known types'
    include path by itself) for `files` into `out_dir`."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(f) for f in files),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StubsError(f"grpc_tools.protoc failed ({result.returncode}):\n{result.stderr.strip()}")


def ensure_stubs(proto_dir: Path, stubs_root: Path) -> Path:
    """The folder holding stubs generated from `proto_dir`, generating them
    under `stubs_root` first if needed."""
    files = proto_files(proto_dir)
    try:
        target = stubs_root / stubs_key(proto_dir, files)
        if target.is_dir():
            return target
        stubs_root.mkdir(parents=True, exist_ok=True)
        # Generate next to the target and rename, so a concurrent run never
        # imports half-written stubs.
        scratch = Path(tempfile.mkdtemp(prefix=".generating-", dir=stubs_root))
    except OSError as e:
        raise StubsError(f"preparing stubs in {stubs_root}: {e}") from e
    try:
        generate_stubs(proto_dir, files, scratch)
        try:
            scratch.rename(target)
        except OSError as e:
            # Fine if a concurrent run got there first: its stubs are the same.
            if not target.is_dir():
                raise StubsError(f"moving the generated stubs to {target}: {e}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_stubs(stubs_dir: Path) -> Stubs:
    """Imports the generated modules from `stubs_dir`."""
    sys.path.insert(0, str(stubs_dir))
    package = ".".join(PROTO_PACKAGE_DIR.parts)
    try:
        return Stubs(
            common=importlib.import_module(f"{package}.common_pb2"),
            fleet=importlib.import_module(f"{package}.fleet_pb2"),
            fleet_grpc=importlib.import_module(f"{package}.fleet_pb2_grpc"),
            rollout=importlib.import_module(f"{package}.rollout_pb2"),
            rollout_grpc=importlib.import_module(f"{package}.rollout_pb2_grpc"),
        )
    except ImportError as e:
        # e.g. stubs generated by another protobuf than the one installed
        raise StubsError(
            f"the stubs in {stubs_dir} do not import ({e}); delete the folder to generate them again"
        ) from e


def default_stubs_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "kairos-fleet" / "python-stubs"


# --------------------------------------------------------------------------
# Connection


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise UsageError(f"reading the {what} {path}: {e.strerror or e}") from e


def target_of(server: str) -> str:
    """`host:port` of a server given as `https://host:port` or `host:port`."""
    if server.startswith("http://"):
        raise UsageError(f"server {server!r}: the control plane only speaks TLS; use https:// or host:port")
    target = server.removeprefix("https://").rstrip("/")
    if not target or "/" in target:
        raise UsageError(f"server {server!r}: expected host:port, e.g. 127.0.0.1:7001")
    return target


def open_channel(server: str, ca_file: Path, token_file: Path) -> grpc.Channel:
    """A TLS channel trusting only the cluster CA, adding the bearer token
    to every call."""
    ca_pem = read_text(ca_file, "CA file").encode()
    token = read_text(token_file, "token file").strip()
    if not token:
        raise UsageError(f"the token file {token_file} is empty")
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        # Sends `authorization: Bearer <token>`, only over a secure channel.
        grpc.access_token_call_credentials(token),
    )
    return grpc.secure_channel(target_of(server), credentials)


# --------------------------------------------------------------------------
# Names and selectors


def enum_name(enum_type, value: int, prefix: str) -> str:
    """An enum value as kairosctl prints it: `ROLLOUT_PHASE_AWAITING_APPROVAL`
    → `awaiting-approval`; `unknown` for values this script does not know."""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return "unknown"
    return name.removeprefix(prefix).lower().replace("_", "-")


def label_requirement(stubs: Stubs, text: str):
    """`key=value`, `key!=value` or `key` (exists) as a LabelRequirement."""
    common = stubs.common
    if "!=" in text:
        key, value = text.split("!=", 1)
        operator, values = common.LABEL_OPERATOR_NOT_IN, [value]
    elif "=" in text:
        key, value = text.split("=", 1)
        operator, values = common.LABEL_OPERATOR_IN, [value]
    else:
        key, operator, values = text, common.LABEL_OPERATOR_EXISTS, []
    if not key:
        raise UsageError(f"label {text!r}: expected key=value, key!=value or key")
    return common.LabelRequirement(key=key, operator=operator, values=values)


def node_selector(stubs: Stubs, args: argparse.Namespace):
    return stubs.common.NodeSelector(
        flavors=args.flavor,
        arches=args.arch,
        variants=args.variant,
        labels=[label_requirement(stubs, text) for text in args.label],
        node_ids=args.node,
    )


# --------------------------------------------------------------------------
# Commands


def list_nodes(stubs: Stubs, channel: grpc.Channel, request, timeout: float) -> Iterator:
    """Every node matching `request`'s filter, following the pages."""
    client = stubs.fleet_grpc.FleetServiceStub(channel)
    while True:
        page = client.ListNodes(request, timeout=timeout)
        yield from page.nodes
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_nodes(stubs: Stubs, channel: grpc.Channel, args: argparse.Namespace) -> int:
    node_filter = stubs.fleet.NodeFilter(selector=node_selector(stubs, args))
    if args.online is not None:
        node_filter.online = args.online
    request = stubs.fleet.ListNodesRequest(filter=node_filter, page_size=1000)
    nodes = list_nodes(stubs, channel, request, args.timeout)
    if args.output == "json":
        for node in nodes:
            print(json.dumps(json_format.MessageToDict(node, preserving_proto_field_name=True), sort_keys=True))
        return EXIT_OK
    rows = [("NODE ID", "HOSTNAME", "FLAVOR", "RELEASE", "STATE", "ONLINE")]
    for node in nodes:
        rows.append(
            (
                node.node_id,
                node.hostname,
                node.family.flavor,
                node.identity.release,
                enum_name(stubs.common.NodeState, node.state, "NODE_STATE_"),
                "yes" if node.online else "no",
            )
        )
    print_table(rows)
    print(f"{len(rows) - 1} nodes", file=sys.stderr)
    return EXIT_OK


def cmd_create(stubs: Stubs, channel: grpc.Channel, args: argparse.Namespace) -> int:
    strategy = stubs.rollout.RolloutStrategy(waves=args.waves.split(",") if args.waves else [])
    if args.max_unavailable is not None:
        strategy.max_unavailable = args.max_unavailable
    spec = stubs.rollout.RolloutSpec(
        target_release=args.to,
        selector=node_selector(stubs, args),
        strategy=strategy,
        description=args.description,
    )
    # The idempotency key: should this call be retried, the server returns
    # the rollout the first attempt created instead of making a second one.
    request = stubs.rollout.CreateRolloutRequest(spec=spec, request_id=str(uuid.uuid4()))
    client = stubs.rollout_grpc.RolloutServiceStub(channel)
    response = client.Create(request, timeout=args.timeout)
    for refusal in response.refused:
        print(f"refused {refusal.node_id}: {refusal.message} ({refusal.way_out})", file=sys.stderr)
    print(response.rollout.rollout_id)
    return EXIT_OK


def describe_event(stubs: Stubs, event) -> dict:
    """The parts of a RolloutEvent worth printing, as plain values."""
    out = {
        "kind": enum_name(stubs.rollout.RolloutEventKind, event.kind, "ROLLOUT_EVENT_KIND_"),
        "revision": event.revision,
    }
    if event.HasField("time"):
        out["time"] = event.time.ToJsonString()
    if event.HasField("rollout"):
        status = event.rollout.status
        totals = status.totals
        out.update(
            rollout_id=event.rollout.rollout_id,
            phase=enum_name(stubs.rollout.RolloutPhase, status.phase, "ROLLOUT_PHASE_"),
            current_wave=status.current_wave,
            healthy=totals.healthy,
            failed=totals.failed,
            in_flight=totals.in_flight,
            total=totals.total,
        )
        if status.reason_message:
            out["reason"] = status.reason_message
    if event.messages:
        out["messages"] = list(event.messages)
    return out


def event_line(view: dict) -> str:
    parts = [view.get("time", "-"), view["kind"]]
    if "phase" in view:
        parts.append(
            f"{view['rollout_id']} {view['phase']} wave {view['current_wave']} "
            f"healthy {view['healthy']}/{view['total']} in flight {view['in_flight']} failed {view['failed']}"
        )
    if "reason" in view:
        parts.append(f"reason: {view['reason']}")
    parts.extend(view.get("messages", []))
    return " | ".join(parts)


def cmd_watch(stubs: Stubs, channel: grpc.Channel, args: argparse.Namespace) -> int:
    stop_at = set(TERMINAL_PHASES) | set(args.until)
    request = stubs.rollout.WatchRolloutsRequest(rollout_id=args.rollout_id)
    client = stubs.rollout_grpc.RolloutServiceStub(channel)
    # No deadline: the stream lasts as long as the rollout takes.
    stream = client.Watch(request)
    seen_rollout = False
    try:
        for event in stream:
            view = describe_event(stubs, event)
            if view["kind"] == "synced" and not seen_rollout:
                # The snapshot before SYNCED holds every matching rollout:
                # none means there is no such rollout to wait for.
                print(f"error: rollout {args.rollout_id} does not exist", file=sys.stderr)
                return EXIT_NOT_FOUND
            seen_rollout = seen_rollout or "phase" in view
            print(json.dumps(view, sort_keys=True) if args.output == "json" else event_line(view), flush=True)
            phase = view.get("phase")
            if phase in stop_at:
                if phase == "aborted" and "aborted" not in args.until:
                    print(f"rollout {args.rollout_id} was aborted: {view.get('reason', '')}", file=sys.stderr)
                    return EXIT_ABORTED
                return EXIT_OK
    finally:
        stream.cancel()
    print(f"the watch stream of {args.rollout_id} ended before the rollout did", file=sys.stderr)
    return EXIT_UNAVAILABLE


def cmd_pause(stubs: Stubs, channel: grpc.Channel, args: argparse.Namespace) -> int:
    request = stubs.rollout.PauseRolloutRequest(rollout_id=args.rollout_id, reason=args.reason)
    client = stubs.rollout_grpc.RolloutServiceStub(channel)
    rollout = client.Pause(request, timeout=args.timeout).rollout
    phase = enum_name(stubs.rollout.RolloutPhase, rollout.status.phase, "ROLLOUT_PHASE_")
    print(f"{rollout.rollout_id} {phase}: {rollout.status.reason_message}")
    return EXIT_OK


# --------------------------------------------------------------------------
# Command line


def add_selector_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selector (repeat a flag for any of several values)")
    group.add_argument("--flavor", action="append", default=[], help="flavor id, e.g. ubuntu")
    group.add_argument("--arch", action="append", default=[], help="amd64 or arm64")
    group.add_argument("--variant", action="append", default=[], help="core or standard")
    group.add_argument("-l", "--label", action="append", default=[], metavar="K=V", help="k=v, k!=v or k (exists)")
    group.add_argument("--node", action="append", default=[], metavar="ID", help="a node id")


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--server",
        default=env("KAIROS_FLEET_SERVER", "127.0.0.1:7001"),
        help="replica address, host:port or https://host:port (env KAIROS_FLEET_SERVER)",
    )
    p.add_argument(
        "--ca-file", type=Path, default=env("KAIROS_FLEET_CA_FILE"), help="cluster CA (env KAIROS_FLEET_CA_FILE)"
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=env("KAIROS_FLEET_TOKEN_FILE"),
        help="file holding an operator token kft_... (env KAIROS_FLEET_TOKEN_FILE)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per unary call (default 30)")
    p.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR, help="the repository's proto/ folder")
    p.add_argument(
        "--stubs-dir",
        type=Path,
        default=env("KAIROS_FLEET_STUBS_DIR") or default_stubs_root(),
        help="where generated stubs are kept (env KAIROS_FLEET_STUBS_DIR;\ndefault ~/.cache/kairos-fleet/python-stubs)",
    )
    commands = p.add_subparsers(dest="command", required=True)

    nodes = commands.add_parser("nodes", help="list nodes (FleetService.ListNodes)")
    add_selector_flags(nodes)
    online = nodes.add_mutually_exclusive_group()
    online.add_argument("--online", dest="online", action="store_true", default=None, help="only online nodes")
    online.add_argument("--offline", dest="online", action="store_false", help="only offline nodes")
    nodes.add_argument("-o", "--output", choices=("table", "json"), default="table", help="json: one node a line")

    create = commands.add_parser("create", help="create a rollout (RolloutService.Create); prints its id")
    create.add_argument("--to", required=True, metavar="RELEASE", help="target Kairos release, e.g. v2.4.3")
    add_selector_flags(create)
    create.add_argument("--waves", help="cumulative wave sizes, e.g. 1,10%%,100%% (default: the change class's)")
    create.add_argument("--max-unavailable", type=int, help="nodes in flight at most")
    create.add_argument("--description", default="", help="free text, e.g. a change ticket")

    watch = commands.add_parser("watch", help="follow one rollout (RolloutService.Watch) until it ends")
    watch.add_argument("rollout_id")
    watch.add_argument(
        "--until",
        action="append",
        default=[],
        choices=PHASE_NAMES,
        metavar="PHASE",
        help="also stop when the rollout enters this phase, e.g. paused (repeatable)",
    )
    watch.add_argument("-o", "--output", choices=("text", "json"), default="text", help="json: one event a line")

    pause = commands.add_parser("pause", help="pause a rollout (RolloutService.Pause)")
    pause.add_argument("rollout_id")
    pause.add_argument("--reason", default="", help="why, for the record")
    return p


COMMANDS = {"nodes": cmd_nodes, "create": cmd_create, "watch": cmd_watch, "pause": cmd_pause}

EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
}


def main(argv: Iterable[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.ca_file is None or args.token_file is None:
            raise UsageError(
                "pass --ca-file and --token-file (or set KAIROS_FLEET_CA_FILE and KAIROS_FLEET_TOKEN_FILE)"
            )
        stubs = load_stubs(ensure_stubs(args.proto_dir, args.stubs_dir))
        with open_channel(args.server, args.ca_file, args.token_file) as channel:
            return COMMANDS[args.command](stubs, channel, args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StubsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return EXIT_BY_CODE.get(e.code(), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
