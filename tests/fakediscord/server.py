"""An aiohttp server that plays Discord for the real discord.py client: REST under `/api/v10`, the
gateway websocket at `/gateway`, and a CDN for attachments at `/cdn`.

It follows the wire protocol discord.py 2.7 speaks (see docs/testing.md for the list of quirks it
depends on) and enforces Discord's rules — message limits, interaction deadlines, per-channel rate
limits with real `X-RateLimit-*` headers — so that a bot bug Discord would reject fails here too.
Every REST request is recorded in `calls` for tests to assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import rules
from .rules import ApiError
from .state import (
    ARCHIVE_DURATIONS,
    CREATE_PRIVATE_THREADS,
    CREATE_PUBLIC_THREADS,
    DM,
    EPHEMERAL,
    LOADING,
    MANAGE_MESSAGES,
    MANAGE_THREADS,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
    Channel,
    Command,
    Guild,
    Interaction,
    Message,
    Version,
    World,
    iso_now,
    snowflake,
)

log = logging.getLogger("fakediscord")

API = "/api/v10"

# Gateway intents (https://discord.com/developers/docs/events/gateway#gateway-intents).
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_TYPING = 1 << 11
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15
PRIVILEGED = GUILD_MEMBERS | (1 << 8) | MESSAGE_CONTENT

HAS_THREAD = 1 << 5  # message flag: a thread was started from this message

# Application flags telling the client which privileged intents the app has been granted.
FLAG_GATEWAY_PRESENCE = 1 << 12
FLAG_GATEWAY_GUILD_MEMBERS = 1 << 14
FLAG_GATEWAY_MESSAGE_CONTENT = 1 << 18

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Per-request storage: the parsed JSON body (or multipart `payload_json`) and the uploaded files.
PAYLOAD = web.RequestKey("payload", object) if hasattr(web, "RequestKey") else "payload"
FILES = web.RequestKey("files", list) if hasattr(web, "RequestKey") else "files"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response whose Content-Type is exactly `application/json` (discord.py compares it verbatim)."""
    out = {"Content-Type": "application/json"}
    out.update(headers or {})
    return web.Response(body=json.dumps(data).encode(), status=status, headers=out)


@dataclass
class Call:
    """One REST request as the bot made it, and what the fake answered."""

    method: str
    path: str
    route: str  # the route template, e.g. /channels/{channel_id}/messages
    params: dict[str, str]
    match: dict[str, str]
    json: Any = None
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # (field, filename, data)
    at: float = field(default_factory=time.monotonic)
    status: int = 0
    response: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def channel_id(self) -> int | None:
        raw = self.match.get("channel_id")
        return int(raw) if raw else None


@dataclass
class Forced:
    """`force_429`: the next `count` matching requests are answered 429."""

    count: int
    retry_after: float
    method: str | None
    route: str | None  # substring of the route template
    is_global: bool = False


@dataclass
class Bucket:
    limit: int
    window: float
    reset_at: float = 0.0
    used: int = 0


class GatewaySession:
    """One identified gateway session; it outlives its socket so that RESUME can replay what was missed."""

    def __init__(self, server: FakeDiscord, intents: int, shard: list[int] | None) -> None:
        self.server = server
        self.id = secrets.token_hex(16)
        self.intents = intents
        self.shard = shard
        self.seq = 0
        self.ws: web.WebSocketResponse | None = None
        self.buffer: list[dict[str, Any]] = []
        self.lock = asyncio.Lock()
        self.heartbeats = 0

    def wants(self, intent: int | None) -> bool:
        return intent is None or bool(self.intents & intent)

    async def send_raw(self, payload: dict[str, Any]) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        async with self.lock:
            self.seq += 1
            payload = {"op": 0, "t": event, "s": self.seq, "d": data}
            self.buffer.append(payload)
            del self.buffer[:-1000]
            await self.send_raw(payload)


class FakeDiscord:
    """The server.  Create it, `await start()`, point discord.py at `api_base` / `gateway_url`."""

    def __init__(self, world: World | None = None) -> None:
        self.world = world or World()
        self.calls: list[Call] = []
        self.cdn_requests: list[str] = []  # the path of every CDN download (attachments fetched)
        self.sessions: dict[str, GatewaySession] = {}
        self.identifies: list[dict[str, Any]] = []
        self.gateway_log: list[tuple[str, dict[str, Any]]] = []  # (direction, payload) — for debugging
        self.sockets: set[web.WebSocketResponse] = set()
        # Rules that tests may switch.
        self.rate_limits = False  # per-channel message-write buckets like Discord's (5 per 5 s)
        self.rate_limit_count = 5
        self.rate_limit_window = 5.0
        self.ack_deadline = 3.0  # an interaction must be acknowledged within this
        self.token_lifetime = 15 * 60.0  # an interaction token works this long
        self.privileged_intents = PRIVILEGED  # what the developer portal granted the app
        self.heartbeat_interval_ms = 41250
        self.forced: list[Forced] = []
        # Network latency to simulate: seconds a request takes to arrive (rate limits count arrivals).
        self.latency: Callable[[Call], float] | None = None
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.last_write: dict[int, float] = {}  # channel id -> time of the bot's last message write
        self.guild_creates_sent = asyncio.Event()
        self.changed = asyncio.Event()  # set on every state change; waiters clear it
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.app = self._build_app()

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    async def start(self, port: int = 0) -> FakeDiscord:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self.world.cdn_base = self.base_url + "/cdn"
        return self

    async def stop(self) -> None:
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _touch(self) -> None:
        self.changed.set()

    # ------------------------------------------------------------------ app and middleware
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/cdn/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", "/users/@me", self._get_me),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/applications/@me", self._get_application),
            ("GET", "/users/{user_id}", self._get_user),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("GET", "/channels/{channel_id}/messages", self._get_messages),
            ("POST", "/channels/{channel_id}/messages", self._create_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message),
            ("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self._add_reaction),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self._no_content),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("POST", "/channels/{channel_id}/messages/{message_id}/threads", self._thread_from_message),
            ("POST", "/channels/{channel_id}/threads", self._thread_without_message),
            ("PUT", "/channels/{channel_id}/thread-members/@me", self._no_content),
            ("GET", "/guilds/{guild_id}", self._get_guild),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self._get_roles),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member),
            ("GET", "/applications/{application_id}/commands", self._get_commands),
            ("PUT", "/applications/{application_id}/commands", self._put_commands),
            ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._interaction_callback),
            ("POST", "/webhooks/{application_id}/{token}", self._followup),
            ("GET", "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_get),
            ("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_edit),
            ("DELETE", "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_delete),
        ]
        for method, path, handler in routes:
            r.add_route(method, API + path, handler)
        r.add_route("*", API + "/{tail:.*}", self._unknown_route)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API):
            return await handler(request)
        resource = request.match_info.route.resource
        template = resource.canonical[len(API) :] if resource is not None else request.path[len(API) :]
        call = Call(request.method, request.path[len(API) :], template, dict(request.query), dict(request.match_info))
        self.calls.append(call)
        try:
            await self._read_body(request, call)
            delay = self.latency(call) if self.latency is not None else 0.0
            if delay > 0:
                await asyncio.sleep(delay)
                call.at = time.monotonic()
            self._check_auth(request, template)
            limited, headers = self._forced_429(call), None
            if limited is None:
                limited, headers = self._rate_limit(call)
            if limited is not None:
                response = limited
            else:
                response = await handler(request)
                if headers:
                    response.headers.update(headers)
        except ApiError as exc:
            response = json_response(exc.body(), status=exc.status)
            call.response = exc.body()
        except Exception as exc:  # a bug in the fake: make it loud in the test output
            log.exception("fake discord handler failed on %s %s", request.method, request.path)
            response = json_response({"message": f"fake server error: {exc!r}", "code": 0}, status=500)
        call.status = response.status
        if call.response is None and isinstance(response, web.Response) and response.body:
            with contextlib.suppress(Exception):
                call.response = json.loads(response.body)  # type: ignore[arg-type]
        self._touch()
        return response

    async def _read_body(self, request: web.Request, call: Call) -> None:
        request[PAYLOAD] = None
        request[FILES] = []
        if not request.body_exists:
            return
        ctype = request.content_type
        if ctype == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                name = part.name or ""
                data = await part.read(decode=False)
                if name == "payload_json":
                    request[PAYLOAD] = json.loads(data)
                elif part.filename is not None:
                    request[FILES].append(
                        (name, part.filename, bytes(data), part.headers.get("Content-Type", "application/octet-stream"))
                    )
            call.files = [(n, f, d) for n, f, d, _ in request[FILES]]
        else:
            raw = await request.read()
            if raw:
                try:
                    request[PAYLOAD] = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, 50109, "The request body contains invalid JSON.") from exc
        call.json = request[PAYLOAD]

    def _check_auth(self, request: web.Request, template: str) -> None:
        if template.startswith(("/webhooks/", "/interactions/")):
            return  # authenticated by the token in the URL
        if request.headers.get("Authorization") != f"Bot {self.world.token}":
            raise ApiError(401, 0, "401: Unauthorized")

    # ------------------------------------------------------------------ rate limits
    def force_429(
        self,
        count: int = 1,
        *,
        retry_after: float = 0.5,
        method: str | None = None,
        route: str | None = None,
        is_global: bool = False,
    ) -> None:
        """Answer the next `count` requests matching `method` and a `route` template substring with 429."""
        self.forced.append(Forced(count, retry_after, method, route, is_global))

    def _too_many(
        self, retry_after: float, *, is_global: bool = False, bucket: str | None = None, limit: int | None = None
    ) -> web.Response:
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        if bucket is not None and limit is not None:
            headers.update(
                {
                    "X-RateLimit-Bucket": bucket,
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                    "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                }
            )
        body = {"message": "You are being rate limited.", "retry_after": round(retry_after, 3), "global": is_global}
        return json_response(body, status=429, headers=headers)

    def _forced_429(self, call: Call) -> web.Response | None:
        for forced in self.forced:
            if forced.count <= 0:
                continue
            if forced.method and forced.method != call.method:
                continue
            if forced.route and forced.route not in call.route:
                continue
            forced.count -= 1
            return self._too_many(forced.retry_after, is_global=forced.is_global)
        return None

    def _bucket_key(self, call: Call) -> tuple[str, str] | None:
        """Which limited bucket a request falls in: message writes per channel, webhook writes per token."""
        if call.method in ("POST", "PATCH", "DELETE"):
            if call.route in ("/channels/{channel_id}/messages", "/channels/{channel_id}/messages/{message_id}"):
                return ("channel-messages", call.match["channel_id"])
            if call.route.startswith("/webhooks/"):
                return ("webhook", call.match["token"])
        return None

    def _rate_limit(self, call: Call) -> tuple[web.Response | None, dict[str, str] | None]:
        """Discord-style fixed-window buckets; returns (a 429 to send, or headers for the real answer)."""
        if not self.rate_limits:
            return None, None
        key = self._bucket_key(call)
        if key is None:
            return None, None
        now = time.monotonic()
        bucket = self.buckets.setdefault(key, Bucket(self.rate_limit_count, self.rate_limit_window))
        if now >= bucket.reset_at:
            bucket.used, bucket.reset_at = 0, now + bucket.window
        reset_after = bucket.reset_at - now
        bucket_hash = f"fake-{key[0]}"
        if bucket.used >= bucket.limit:
            return self._too_many(reset_after, bucket=bucket_hash, limit=bucket.limit), None
        bucket.used += 1
        # Attached to the handler's response by the middleware (discord.py limits itself from these).
        return None, {
            "X-RateLimit-Bucket": bucket_hash,
            "X-RateLimit-Limit": str(bucket.limit),
            "X-RateLimit-Remaining": str(bucket.limit - bucket.used),
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        }

    # ------------------------------------------------------------------ gateway
    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self.sockets.add(ws)
        session: GatewaySession | None = None
        try:
            if request.query.get("encoding", "json") != "json":
                await ws.close(code=4002, message=b"only json encoding is supported by the fake")
                return ws
            await ws.send_str(
                json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
            )
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                self.gateway_log.append(("in", payload))
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    if session:
                        session.heartbeats += 1
                    await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:
                    session = await self._identify(ws, data)
                    if session is None:
                        return ws
                elif op == 6:
                    session = await self._resume(ws, data)
                    if session is None:
                        return ws
                elif op == 8 and session is not None:
                    await self._request_members(session, data)
                # op 3 (presence) and op 4 (voice) are accepted and ignored.
        finally:
            self.sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        self.identifies.append({k: v for k, v in data.items() if k != "token"})
        if data.get("token") != self.world.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED & ~self.privileged_intents:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        session = GatewaySession(self, intents, data.get("shard"))
        session.ws = ws
        self.sessions[session.id] = session
        world = self.world
        guilds = [g for g in world.guilds.values() if world.bot.id in g.members]
        flags = 0
        if self.privileged_intents & MESSAGE_CONTENT:
            flags |= FLAG_GATEWAY_MESSAGE_CONTENT
        if self.privileged_intents & GUILD_MEMBERS:
            flags |= FLAG_GATEWAY_GUILD_MEMBERS
        user = world.bot.payload() | {"verified": True, "mfa_enabled": False, "email": None}
        ready = {
            "v": 10,
            "user": user,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(world.application_id), "flags": flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
        }
        if session.shard:
            ready["shard"] = session.shard
        await session.dispatch("READY", ready)
        for guild in guilds:
            if session.wants(GUILDS):
                await session.dispatch("GUILD_CREATE", world.guild_payload(guild))
        self.guild_creates_sent.set()
        self._touch()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None or data.get("token") != self.world.token:
            await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return None
        session.ws = ws
        seq = int(data.get("seq") or 0)
        for payload in list(session.buffer):
            if payload["s"] > seq:
                await session.send_raw(payload)
        await session.dispatch("RESUMED", {})
        self._touch()
        return session

    async def _request_members(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild_ids = data.get("guild_id")
        for gid in guild_ids if isinstance(guild_ids, list) else [guild_ids]:
            guild = self.world.guilds.get(int(gid))
            if guild is None:
                continue
            chunk = {
                "guild_id": str(guild.id),
                "members": [m.payload() for m in guild.members.values()],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
                "presences": [],
            }
            if data.get("nonce"):
                chunk["nonce"] = data["nonce"]
            await session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if s.ws is not None and not s.ws.closed]

    async def dispatch(
        self,
        event: str,
        data: dict[str, Any],
        intent: int | None = None,
        transform: Callable[[GatewaySession, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Send an event to every identified session that asked for `intent` (None = always)."""
        for session in list(self.sessions.values()):
            if session.wants(intent):
                await session.dispatch(event, transform(session, data) if transform else data)

    async def reconnect_gateway(self) -> None:
        """Ask every session to reconnect (op 7); discord.py then RESUMEs at `resume_gateway_url`."""
        for session in self.live_sessions():
            await session.send_raw({"op": 7, "d": None, "s": None, "t": None})

    async def dispatch_message(self, message: Message, event: str = "MESSAGE_CREATE") -> None:
        """MESSAGE_CREATE/UPDATE, honouring the guild/DM message intents and the message-content intent."""
        if message.ephemeral:
            return  # ephemeral messages never reach the gateway
        payload = self.world.message_payload(message)
        intent = DIRECT_MESSAGES if message.guild_id is None else GUILD_MESSAGES
        bot_id = self.world.bot.id

        def content_rule(session: GatewaySession, data: dict[str, Any]) -> dict[str, Any]:
            if session.intents & MESSAGE_CONTENT or message.guild_id is None:
                return data
            if message.author.id == bot_id or any(u.id == bot_id for u in message.mentions):
                return data
            return data | {"content": "", "embeds": [], "attachments": [], "components": []}

        await self.dispatch(event, payload, intent, content_rule)

    # ------------------------------------------------------------------ helpers for handlers
    def _channel(self, request: web.Request) -> Channel:
        try:
            channel = self.world.channels.get(int(request.match_info["channel_id"]))
        except ValueError:
            channel = None
        if channel is None:
            raise rules.unknown("channel")
        guild = self.world.guild_of(channel)
        if channel.type == DM:
            return channel
        if guild is None or self.world.bot.id not in guild.members:
            raise rules.MISSING_ACCESS
        if not self.world.permissions(channel, self.world.bot) & VIEW_CHANNEL:
            raise rules.MISSING_ACCESS
        return channel

    def _message(self, channel: Channel, raw_id: str) -> Message:
        try:
            message = self.world.messages.get(int(raw_id))
        except ValueError:
            message = None
        if message is None or message.deleted or message.channel_id != channel.id:
            raise rules.unknown("message")
        return message

    def _check_send(self, channel: Channel) -> None:
        if channel.type == DM:
            return
        perms = self.world.permissions(channel, self.world.bot)
        need = SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES
        if not perms & need:
            raise rules.MISSING_PERMISSIONS
        if channel.is_thread and channel.locked and not perms & MANAGE_THREADS:
            raise ApiError(400, 50083, "Thread is archived")  # a locked thread: only Manage Threads may post
        if channel.is_thread and channel.archived:
            channel.archived = False  # Discord: a message unarchives an (unlocked) archived thread

    def _note_write(self, channel_id: int) -> None:
        self.last_write[channel_id] = time.monotonic()

    def _attachments_from(
        self, channel: Channel, request: web.Request, payload: dict[str, Any], keep: list[Any] | None = None
    ) -> list[Any]:
        """New attachments from the multipart files, plus existing ones listed by id in `attachments`."""
        described = {str(a.get("id")): a for a in payload.get("attachments") or [] if isinstance(a, dict)}
        out = []
        for index, (name, filename, data, ctype) in enumerate(request[FILES]):
            slot = name[len("files[") : -1] if name.startswith("files[") else str(index)
            meta = described.get(slot, {})
            out.append(
                self.world.store_blob(
                    channel.id, meta.get("filename") or filename, data, ctype, meta.get("description")
                )
            )
        if keep is not None:
            wanted = {str(a.get("id")) for a in payload.get("attachments") or [] if isinstance(a, dict)}
            out = [a for a in keep if str(a.id) in wanted] + out
        return out

    def _reference(self, channel: Channel, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, Message | None]:
        ref = payload.get("message_reference")
        if not ref:
            return None, None
        target = self.world.messages.get(int(ref.get("message_id", 0)))
        ref_channel = int(ref.get("channel_id") or channel.id)
        if target is None or target.deleted or ref_channel != target.channel_id or target.channel_id != channel.id:
            if ref.get("fail_if_not_exists", True):
                raise rules.form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
            return None, None
        data = {"type": 0, "message_id": str(target.id), "channel_id": str(channel.id)}
        if channel.guild_id:
            data["guild_id"] = str(channel.guild_id)
        return data, target

    def new_bot_message(
        self,
        channel: Channel,
        request: web.Request,
        payload: dict[str, Any],
        *,
        webhook: bool = False,
        interaction: Interaction | None = None,
        msg_type: int = 0,
        extra_flags: int = 0,
    ) -> Message:
        """Validate a create body the way Discord does and store the message (not yet dispatched)."""
        rules.check_payload(payload)
        reference, replied = self._reference(channel, payload) if not webhook else (None, None)
        attachments = self._attachments_from(channel, request, payload)
        content = payload.get("content") or ""
        embeds = payload.get("embeds") or []
        components = payload.get("components") or []
        flags = int(payload.get("flags") or 0) | extra_flags
        if not flags & LOADING and rules.is_empty(content, embeds, attachments, components, payload):
            raise rules.EMPTY_MESSAGE
        message = Message(
            snowflake(),
            channel.id,
            self.world.bot,
            content,
            guild_id=channel.guild_id,
            embeds=embeds,
            components=components,
            attachments=attachments,
            reference=reference,
            type=19 if reference else msg_type,
            flags=flags,
            webhook_id=self.world.application_id if webhook else None,
            interaction=interaction,
            allowed_mentions=payload.get("allowed_mentions"),
        )
        self.world.resolve_mentions(message, message.allowed_mentions, replied)
        message.versions.append(Version(time.monotonic(), content, self.world.message_payload(message)))
        self.world.messages[message.id] = message
        self._note_write(channel.id)
        return message

    def apply_edit(self, message: Message, request: web.Request, payload: dict[str, Any]) -> None:
        """Validate an edit body and apply it (Discord keeps fields that are absent; a V2 message stays V2)."""
        rules.check_payload(payload, message.flags)
        channel = self.world.channels[message.channel_id]
        content = message.content if payload.get("content", ...) is ... else (payload.get("content") or "")
        embeds = message.embeds if "embeds" not in payload else (payload.get("embeds") or [])
        components = message.components if "components" not in payload else (payload.get("components") or [])
        attachments = message.attachments
        if "attachments" in payload or request[FILES]:
            attachments = self._attachments_from(channel, request, payload, keep=message.attachments)
        if rules.is_empty(content, embeds, attachments, components):
            raise rules.EMPTY_MESSAGE
        message.content, message.embeds, message.components = content, embeds, components
        message.attachments = attachments
        if "flags" in payload and payload["flags"] is not None:
            kept = message.flags & (EPHEMERAL | rules.IS_COMPONENTS_V2)  # neither can be changed by an edit
            message.flags = kept | (int(payload["flags"]) & ~EPHEMERAL)
        message.flags &= ~LOADING
        message.allowed_mentions = payload.get("allowed_mentions")
        replied = None
        if message.reference:
            replied = self.world.messages.get(int(message.reference["message_id"]))
        self.world.resolve_mentions(message, message.allowed_mentions, replied)
        message.edited_timestamp = iso_now()
        message.versions.append(Version(time.monotonic(), content, self.world.message_payload(message)))
        self._note_write(channel.id)

    # ------------------------------------------------------------------ REST: identity
    async def _get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1},
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        return json_response(self.world.bot.payload() | {"verified": True, "mfa_enabled": False})

    async def _get_application(self, request: web.Request) -> web.Response:
        world = self.world
        flags = 0
        if self.privileged_intents & MESSAGE_CONTENT:
            flags |= FLAG_GATEWAY_MESSAGE_CONTENT
        if self.privileged_intents & GUILD_MEMBERS:
            flags |= FLAG_GATEWAY_GUILD_MEMBERS
        return json_response(
            {
                "id": str(world.application_id),
                "name": world.bot.username,
                "icon": None,
                "description": "fake application",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": world.bot.payload(),
                "owner": world.owner.payload(),
                "team": None,
                "summary": "",
                "verify_key": secrets.token_hex(32),
                "flags": flags,
                "approximate_guild_count": len(world.guilds),
                "tags": [],
                "install_params": None,
                "integration_types_config": {"0": {}},
                "interactions_endpoint_url": None,
                "redirect_uris": [],
            }
        )

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.world.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise rules.unknown("user")
        return json_response(user.payload())

    async def _create_dm(self, request: web.Request) -> web.Response:
        payload = request[PAYLOAD] or {}
        user = self.world.users.get(int(payload.get("recipient_id", 0)))
        if user is None:
            raise rules.unknown("user")
        return json_response(self.world.dm_channel(user).payload())

    # ------------------------------------------------------------------ REST: channels and messages
    async def _get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request).payload())

    async def _get_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        limit = max(1, min(100, int(request.query.get("limit", 50))))
        items = sorted(
            (
                m
                for m in self.world.messages.values()
                if m.channel_id == channel.id and not m.deleted and not m.ephemeral
            ),
            key=lambda m: m.id,
        )
        if "before" in request.query:
            items = [m for m in items if m.id < int(request.query["before"])]
            items = items[-limit:]
        elif "after" in request.query:
            items = [m for m in items if m.id > int(request.query["after"])][:limit]
        elif "around" in request.query:
            pivot = int(request.query["around"])
            older = [m for m in items if m.id < pivot][-(limit // 2) :]
            newer = [m for m in items if m.id >= pivot][: limit - len(older)]
            items = older + newer
        else:
            items = items[-limit:]
        return json_response([self.world.message_payload(m) for m in reversed(items)])

    async def _get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        return json_response(self.world.message_payload(self._message(channel, request.match_info["message_id"])))

    async def _create_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._check_send(channel)
        message = self.new_bot_message(channel, request, request[PAYLOAD] or {})
        await self.dispatch_message(message)
        return json_response(self.world.message_payload(message))

    async def _edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(channel, request.match_info["message_id"])
        # An interaction's response is authored by the bot user, so the channel endpoint edits it like any of
        # the bot's messages (what bots do once the 15-minute interaction token has expired); an ephemeral one
        # exists only for its interaction and is not found here.
        if message.flags & EPHEMERAL:
            raise rules.unknown("message")
        if message.author.id != self.world.bot.id:
            raise rules.NOT_AUTHOR
        self.apply_edit(message, request, request[PAYLOAD] or {})
        await self.dispatch_message(message, "MESSAGE_UPDATE")
        return json_response(self.world.message_payload(message))

    async def _delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        message = self._message(channel, request.match_info["message_id"])
        if message.author.id != self.world.bot.id and not (
            self.world.permissions(channel, self.world.bot) & MANAGE_MESSAGES
        ):
            raise rules.MISSING_PERMISSIONS
        await self.delete_message(message)
        return web.Response(status=204)

    async def delete_message(self, message: Message) -> None:
        message.deleted = True
        self._note_write(message.channel_id)
        data = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id:
            data["guild_id"] = str(message.guild_id)
        if not message.ephemeral:
            await self.dispatch("MESSAGE_DELETE", data, GUILD_MESSAGES if message.guild_id else DIRECT_MESSAGES)

    async def _add_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._message(channel, request.match_info["message_id"])
        return web.Response(status=204)

    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._check_send(channel)
        return web.Response(status=204)

    async def _thread_from_message(self, request: web.Request) -> web.Response:
        """Start Thread from Message: a public thread whose id is the message's; the message gets the
        HAS_THREAD flag (Discord fires THREAD_CREATE and MESSAGE_UPDATE)."""
        channel = self._channel(request)
        message = self._message(channel, request.match_info["message_id"])
        if channel.is_thread or channel.type == DM:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        payload = request[PAYLOAD] or {}
        self._check_thread(channel, payload, private=False)
        if message.id in self.world.channels:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        response = await self._new_thread(channel, payload, message.id, private=False)
        message.flags |= HAS_THREAD
        await self.dispatch_message(message, "MESSAGE_UPDATE")
        return response

    async def _thread_without_message(self, request: web.Request) -> web.Response:
        """Start Thread without Message: `type` defaults to a private thread in API v10, as Discord documents."""
        channel = self._channel(request)
        if channel.is_thread or channel.type == DM:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        payload = request[PAYLOAD] or {}
        private = payload.get("type", PRIVATE_THREAD) == PRIVATE_THREAD
        self._check_thread(channel, payload, private=private)
        return await self._new_thread(channel, payload, None, private=private)

    def _check_thread(self, parent: Channel, payload: dict[str, Any], *, private: bool) -> None:
        """What Discord refuses when a thread is started: the permission (50013, from the parent's
        overwrites), a name outside 1-100 characters or an archive duration it does not offer (50035)."""
        need = CREATE_PRIVATE_THREADS if private else CREATE_PUBLIC_THREADS
        if not self.world.permissions(parent, self.world.bot) & need:
            raise rules.MISSING_PERMISSIONS
        name = payload.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise rules.form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        duration = payload.get("auto_archive_duration")
        if duration is not None and duration not in ARCHIVE_DURATIONS:
            raise rules.form_error(
                "auto_archive_duration", "BASE_TYPE_CHOICES", f"Value must be one of {set(ARCHIVE_DURATIONS)}."
            )

    async def _new_thread(
        self, parent: Channel, payload: dict[str, Any], thread_id: int | None, *, private: bool
    ) -> web.Response:
        thread = self.world.add_thread(
            parent,
            payload["name"],
            owner=self.world.bot,
            thread_id=thread_id,
            private=private,
            auto_archive_duration=payload.get("auto_archive_duration"),
        )
        await self.dispatch("THREAD_CREATE", thread.payload() | {"newly_created": True}, GUILDS)
        return json_response(thread.payload())

    # ------------------------------------------------------------------ REST: guilds
    def _guild(self, request: web.Request) -> Guild:
        guild = self.world.guilds.get(int(request.match_info["guild_id"]))
        if guild is None or self.world.bot.id not in guild.members:
            raise rules.unknown("guild")
        return guild

    async def _get_guild(self, request: web.Request) -> web.Response:
        return json_response(self.world.guild_rest_payload(self._guild(request)))

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return json_response(
            [c.payload() for c in self.world.channels.values() if c.guild_id == guild.id and not c.is_thread]
        )

    async def _get_roles(self, request: web.Request) -> web.Response:
        return json_response([r.payload() for r in self._guild(request).roles.values()])

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        member = guild.members.get(int(request.match_info["user_id"]))
        if member is None:
            raise rules.unknown("member")
        return json_response(member.payload())

    # ------------------------------------------------------------------ REST: application commands
    def commands_for(self, guild_id: int | None) -> list[Command]:
        return sorted((c for c in self.world.commands.values() if c.guild_id == guild_id), key=lambda c: c.id)

    def _command_scope(self, request: web.Request) -> int | None:
        if int(request.match_info["application_id"]) != self.world.application_id:
            raise ApiError(403, 50001, "Missing Access")
        raw = request.match_info.get("guild_id")
        if raw is None:
            return None
        self._guild(request)
        return int(raw)

    async def _get_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        return json_response([c.payload() for c in self.commands_for(scope)])

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body = request[PAYLOAD]
        if not isinstance(body, list):
            raise rules.form_error("_root", "LIST_TYPE_CONVERT", "Must be an array.")
        if len(body) > 100:
            raise rules.form_error("_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        existing = {c.name: c for c in self.commands_for(scope)}
        names: set[str] = set()
        for index, data in enumerate(body):
            _check_command(data, f"{index}")
            if data["name"] in names:
                raise rules.form_error(
                    f"{index}.name",
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    f"Application command names must be unique: {data['name']}",
                )
            names.add(data["name"])
        for command in existing.values():
            del self.world.commands[command.id]
        out = []
        for data in body:
            old = existing.get(data["name"])
            command = Command(
                old.id if old else snowflake(),
                self.world.application_id,
                scope,
                dict(data),
                version=(old.version + 1) if old else 1,
            )
            self.world.commands[command.id] = command
            out.append(command.payload())
        return json_response(out)

    # ------------------------------------------------------------------ REST: interactions
    def _interaction(self, token: str) -> Interaction:
        for interaction in self.world.interactions.values():
            if interaction.token == token:
                if time.monotonic() - interaction.created > self.token_lifetime:
                    raise rules.unknown("webhook")
                return interaction
        raise rules.unknown("webhook")

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        interaction = self.world.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise rules.unknown("interaction")
        if interaction.response_type is not None:
            raise rules.ALREADY_ACKNOWLEDGED
        if time.monotonic() - interaction.created > self.ack_deadline:
            raise rules.unknown("interaction")
        body = request[PAYLOAD] or {}
        kind = body.get("type")
        data = body.get("data") or {}
        channel = self.world.channels[interaction.channel_id]
        resource: dict[str, Any] = {"type": kind}
        message: Message | None = None
        if interaction.type == 4 and kind != 8:  # Discord: an autocomplete can only be answered with choices
            raise rules.form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid response type.")
        if kind in (4, 5):
            ephemeral = bool(int(data.get("flags") or 0) & EPHEMERAL)
            msg_type = 20 if interaction.type == 2 else 19 if interaction.type == 3 else 0
            message = self.new_bot_message(
                channel,
                request,
                data,
                webhook=True,
                interaction=interaction,
                msg_type=msg_type,
                extra_flags=LOADING if kind == 5 else 0,
            )
            interaction.original, interaction.ephemeral = message, ephemeral
            interaction.original_edited = kind == 4
        elif kind in (6, 7):
            if interaction.type != 3 or interaction.message is None:
                raise rules.form_error(
                    "type",
                    "INTERACTION_RESPONSE_TYPE_INVALID",
                    "This response type is only valid for component interactions.",
                )
            interaction.original = interaction.message
            interaction.original_edited = True
            if kind == 7:
                self.apply_edit(interaction.message, request, data)
                message = interaction.message
        elif kind == 8:
            if interaction.type != 4:
                raise rules.form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid response type.")
            interaction.choices = rules.autocomplete_choices(data)
        elif kind == 9:
            pass
        else:
            raise rules.form_error("type", "ENUM_TYPE_COERCE", f"Value {kind!r} is not a valid enum value.")
        interaction.response_type = kind
        interaction.responded_at = time.monotonic()
        if message is not None:
            resource["message"] = self.world.message_payload(message)
            if kind == 7:
                await self.dispatch_message(message, "MESSAGE_UPDATE")
            else:
                await self.dispatch_message(message)
        if request.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        response_message = interaction.original if kind in (4, 5, 7) else None
        meta: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        if response_message is not None:
            meta.update(
                {
                    "response_message_id": str(response_message.id),
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": response_message.ephemeral,
                }
            )
        return json_response({"interaction": meta, "resource": resource})

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        if int(request.match_info["application_id"]) != self.world.application_id:
            raise rules.unknown("webhook")
        return self._interaction(request.match_info["token"])

    def _webhook_message(self, interaction: Interaction, raw_id: str) -> Message:
        if raw_id == "@original":
            if interaction.original is None or interaction.original.deleted:
                raise rules.unknown("message")
            return interaction.original
        for message in interaction.followups:
            if str(message.id) == raw_id and not message.deleted:
                return message
        raise rules.unknown("message")

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        if interaction.response_type is None:
            raise rules.unknown("webhook")
        payload = request[PAYLOAD] or {}
        original = interaction.original
        if interaction.response_type == 5 and original is not None and not interaction.original_edited:
            # Discord: the first follow-up after a deferral replaces the "thinking…" message.
            self.apply_edit(original, request, payload)
            interaction.original_edited = True
            message = original
            await self.dispatch_message(message, "MESSAGE_UPDATE")
        else:
            channel = self.world.channels[interaction.channel_id]
            message = self.new_bot_message(channel, request, payload, webhook=True, interaction=interaction)
            interaction.followups.append(message)
            await self.dispatch_message(message)
        if request.query.get("wait") not in ("1", "true", "True"):
            return web.Response(status=204)
        return json_response(self.world.message_payload(message))

    async def _webhook_get(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        return json_response(self.world.message_payload(message))

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        self.apply_edit(message, request, request[PAYLOAD] or {})
        if message is interaction.original:
            interaction.original_edited = True
        await self.dispatch_message(message, "MESSAGE_UPDATE")
        return json_response(self.world.message_payload(message))

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        await self.delete_message(message)
        return web.Response(status=204)

    # ------------------------------------------------------------------ CDN and fallbacks
    async def _cdn(self, request: web.Request) -> web.Response:
        self.cdn_requests.append(request.path)
        blob = self.world.blobs.get(int(request.match_info["attachment_id"]))
        if blob is None or blob.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=blob.data, headers={"Content-Type": blob.content_type})

    async def _unknown_route(self, request: web.Request) -> web.Response:
        log.warning("fake discord: no such route %s %s", request.method, request.path)
        return json_response({"message": "404: Not Found", "code": 0}, status=404)


_NAME_OK = "abcdefghijklmnopqrstuvwxyz0123456789-_"


def _check_command(data: dict[str, Any], path: str) -> None:
    """The checks Discord applies to a command in a bulk overwrite (names, descriptions, option order)."""
    name = data.get("name") or ""
    ctype = data.get("type", 1)
    if ctype == 1 and (
        not 1 <= len(name) <= 32 or any(ch not in _NAME_OK and not ch.isalnum() for ch in name) or name != name.lower()
    ):
        raise rules.form_error(f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}")
    if ctype == 1 and not 1 <= len(data.get("description") or "") <= 100:
        raise rules.form_error(f"{path}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    for loc, value in (data.get("name_localizations") or {}).items():
        if not 1 <= len(value) <= 32 or value != value.lower():
            raise rules.form_error(
                f"{path}.name_localizations.{loc}", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {value!r}"
            )
    for loc, value in (data.get("description_localizations") or {}).items():
        if not 1 <= len(value) <= 100:
            raise rules.form_error(
                f"{path}.description_localizations.{loc}",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
    options = data.get("options") or []
    if len(options) > 25:
        raise rules.form_error(f"{path}.options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    names: set[str] = set()
    for index, option in enumerate(options):
        sub = f"{path}.options.{index}"
        if option.get("name") in names:
            raise rules.form_error(f"{sub}.name", "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Duplicate name")
        names.add(option.get("name"))
        if option.get("type") in (1, 2):
            _check_command(option | {"type": 1}, sub)
            continue
        if option.get("required"):
            if seen_optional:
                raise rules.form_error(
                    f"{sub}.required",
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        _check_command(option | {"type": 1, "options": []}, sub)
        if len(option.get("choices") or []) > 25:
            raise rules.form_error(f"{sub}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")


__all__ = ["API", "PUBLIC_THREAD", "Call", "FakeDiscord", "GatewaySession", "json_response"]
