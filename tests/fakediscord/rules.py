"""What Discord refuses in a message a bot sends, with Discord's own error codes and shapes.

The point of the fake server is that a bot bug which real Discord would reject (a 2001-character
message, an empty edit, a 26th embed field, a duplicate button id) fails the test here too.
"""

from __future__ import annotations

from typing import Any

CONTENT_LIMIT = 2000
EMBED_TOTAL = 6000
EMBED_LIMITS = {"title": 256, "description": 4096}
MAX_EMBEDS = 10
MAX_FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER_TEXT = 2048
AUTHOR_NAME = 256
MAX_ROWS = 5
MAX_ROW_ITEMS = 5
LABEL_LIMIT = 80
CUSTOM_ID_LIMIT = 100


class ApiError(Exception):
    """An error response: HTTP status plus Discord's JSON body (`code`, `message`, optional `errors`)."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def form_error(path: str, code: str, message: str) -> ApiError:
    """Discord's 50035 "Invalid Form Body", with the nested `errors` object it uses."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path.split(".")):
        errors = {key: errors}
    return ApiError(400, 50035, "Invalid Form Body", errors)


def unknown(what: str) -> ApiError:
    codes = {
        "channel": 10003,
        "guild": 10004,
        "member": 10007,
        "message": 10008,
        "role": 10011,
        "user": 10013,
        "webhook": 10015,
        "interaction": 10062,
        "command": 10063,
    }
    return ApiError(404, codes[what], f"Unknown {what.capitalize()}")


MISSING_PERMISSIONS = ApiError(403, 50013, "Missing Permissions")
MISSING_ACCESS = ApiError(403, 50001, "Missing Access")
EMPTY_MESSAGE = ApiError(400, 50006, "Cannot send an empty message")
ALREADY_ACKNOWLEDGED = ApiError(400, 40060, "Interaction has already been acknowledged.")
NOT_AUTHOR = ApiError(403, 50005, "Cannot edit a message authored by another user")


def check_content(content: Any) -> None:
    if content is None:
        return
    if not isinstance(content, str):
        raise form_error("content", "STRING_TYPE_CONVERT", "Could not interpret value as string.")
    if len(content) > CONTENT_LIMIT:
        raise form_error("content", "BASE_TYPE_MAX_LENGTH", f"Must be {CONTENT_LIMIT} or fewer in length.")


def _embed_text_size(embed: dict[str, Any]) -> int:
    size = len(embed.get("title") or "") + len(embed.get("description") or "")
    size += len((embed.get("footer") or {}).get("text") or "") + len((embed.get("author") or {}).get("name") or "")
    for fld in embed.get("fields") or []:
        size += len(fld.get("name") or "") + len(fld.get("value") or "")
    return size


def check_embeds(embeds: Any) -> None:
    if embeds is None:
        return
    if not isinstance(embeds, list):
        raise form_error("embeds", "LIST_TYPE_CONVERT", "Must be an array.")
    if len(embeds) > MAX_EMBEDS:
        raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    total = 0
    for i, embed in enumerate(embeds):
        for key, limit in EMBED_LIMITS.items():
            if len(embed.get(key) or "") > limit:
                raise form_error(f"embeds.{i}.{key}", "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
        fields = embed.get("fields") or []
        if len(fields) > MAX_FIELDS:
            raise form_error(f"embeds.{i}.fields", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FIELDS} or fewer in length.")
        for j, fld in enumerate(fields):
            name, value = fld.get("name"), fld.get("value")
            if not name or not str(name).strip():
                raise form_error(f"embeds.{i}.fields.{j}.name", "BASE_TYPE_REQUIRED", "This field is required")
            if value is None or not str(value).strip():
                raise form_error(f"embeds.{i}.fields.{j}.value", "BASE_TYPE_REQUIRED", "This field is required")
            if len(name) > FIELD_NAME:
                raise form_error(
                    f"embeds.{i}.fields.{j}.name", "BASE_TYPE_MAX_LENGTH", f"Must be {FIELD_NAME} or fewer in length."
                )
            if len(value) > FIELD_VALUE:
                raise form_error(
                    f"embeds.{i}.fields.{j}.value", "BASE_TYPE_MAX_LENGTH", f"Must be {FIELD_VALUE} or fewer in length."
                )
        if len((embed.get("footer") or {}).get("text") or "") > FOOTER_TEXT:
            raise form_error(f"embeds.{i}.footer.text", "BASE_TYPE_MAX_LENGTH", "Must be 2048 or fewer in length.")
        if len((embed.get("author") or {}).get("name") or "") > AUTHOR_NAME:
            raise form_error(f"embeds.{i}.author.name", "BASE_TYPE_MAX_LENGTH", "Must be 256 or fewer in length.")
        total += _embed_text_size(embed)
    if total > EMBED_TOTAL:
        raise form_error("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")


def check_components(components: Any) -> None:
    if components is None:
        return
    if len(components) > MAX_ROWS:
        raise form_error("components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROWS} or fewer in length.")
    seen: set[str] = set()
    for i, row in enumerate(components):
        if row.get("type") != 1:
            continue  # components v2 layouts are not checked further
        items = row.get("components") or []
        if not items or len(items) > MAX_ROW_ITEMS:
            raise form_error(f"components.{i}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
        for j, item in enumerate(items):
            path = f"components.{i}.components.{j}"
            if item.get("type") == 2:
                if len(item.get("label") or "") > LABEL_LIMIT:
                    raise form_error(f"{path}.label", "BASE_TYPE_MAX_LENGTH", "Must be 80 or fewer in length.")
                if not item.get("label") and not item.get("emoji"):
                    raise form_error(path, "COMPONENT_INVALID", "A button needs a label or an emoji.")
                if item.get("style") == 5:
                    if not item.get("url") or item.get("custom_id"):
                        raise form_error(path, "BUTTON_COMPONENT_INVALID_URL", "A link button needs a url only.")
                    continue
            custom_id = item.get("custom_id")
            if not custom_id:
                raise form_error(f"{path}.custom_id", "BASE_TYPE_REQUIRED", "This field is required")
            if len(custom_id) > CUSTOM_ID_LIMIT:
                raise form_error(f"{path}.custom_id", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
            if custom_id in seen:
                raise form_error(
                    f"{path}.custom_id", "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
                )
            seen.add(custom_id)


# Components V2 (docs.discord.com/developers/components and its Component Reference): the IS_COMPONENTS_V2
# flag (1<<15) disables `content` and embeds; at most 40 components in all (nested ones count); at most 4,000
# characters across the message's text displays; a media gallery holds 1-10 items.  A section holds one to
# three text displays and needs an accessory (a button or a thumbnail); a container holds action rows, text
# displays, sections, galleries, separators and files; a file component only takes `attachment://` references;
# an action row holds 1-5 buttons or one select.  "Once a message has been sent with this flag, it can't be
# removed from that message": an edit of such a message is checked as V2 and keeps the flag.
IS_COMPONENTS_V2 = 1 << 15
V2_MAX_COMPONENTS = 40
V2_TEXT_TOTAL = 4000
V2_TOP_LEVEL = {1, 9, 10, 12, 13, 14, 17}  # action row, section, text display, gallery, file, separator, container
V2_KNOWN = V2_TOP_LEVEL | {2, 3, 5, 6, 7, 8, 11}  # + button, selects, thumbnail
V2_IN_CONTAINER = {1, 9, 10, 12, 13, 14}
V2_ACCESSORY = {2, 11}
V2_SELECTS = {3, 5, 6, 7, 8}


def _check_v2_item(item: dict[str, Any], where: str, parent: int | None) -> None:
    """The rules of one component that depend on its kind and where it sits."""
    kind = item.get("type")
    if parent == 17 and kind not in V2_IN_CONTAINER:
        raise form_error(
            f"{where}.type", "UNION_TYPE_CHOICES", f'Value of field "type" must be one of {sorted(V2_IN_CONTAINER)}.'
        )
    if parent == 9 and kind != 10:
        raise form_error(f"{where}.type", "UNION_TYPE_CHOICES", 'Value of field "type" must be one of [10].')
    if parent == 1 and kind not in {2} | V2_SELECTS:
        raise form_error(
            f"{where}.type", "UNION_TYPE_CHOICES", f'Value of field "type" must be one of {sorted({2} | V2_SELECTS)}.'
        )
    if kind == 10 and (not isinstance(item.get("content"), str) or not item["content"]):
        raise form_error(f"{where}.content", "BASE_TYPE_REQUIRED", "This field is required")
    if kind == 9:
        children = item.get("components") or []
        if not 1 <= len(children) <= 3:
            raise form_error(f"{where}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 3 in length.")
        accessory = item.get("accessory")
        if not isinstance(accessory, dict):
            raise form_error(f"{where}.accessory", "BASE_TYPE_REQUIRED", "This field is required")
        if accessory.get("type") not in V2_ACCESSORY:
            raise form_error(
                f"{where}.accessory.type",
                "UNION_TYPE_CHOICES",
                f'Value of field "type" must be one of {sorted(V2_ACCESSORY)}.',
            )
    if kind == 1:
        children = item.get("components") or []
        selects = [c for c in children if c.get("type") in V2_SELECTS]
        if not 1 <= len(children) <= MAX_ROW_ITEMS or (selects and len(children) > 1):
            raise form_error(f"{where}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    if kind == 13 and not str((item.get("file") or {}).get("url") or "").startswith("attachment://"):
        raise form_error(
            f"{where}.file.url",
            "UNFURLED_MEDIA_ITEM_URL_INVALID",
            "File components only support attachment:// references.",
        )


def check_components_v2(payload: dict[str, Any]) -> None:
    """A Components V2 body: no legacy fields, known types only, and Discord's size limits."""
    if payload.get("content"):
        raise form_error(
            "content",
            "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
            "The 'content' field cannot be used when using MessageFlags.IS_COMPONENTS_V2",
        )
    if payload.get("embeds"):
        raise form_error(
            "embeds",
            "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
            "The 'embeds' field cannot be used when using MessageFlags.IS_COMPONENTS_V2",
        )
    count = 0
    text = 0
    seen: set[str] = set()

    def walk(items: list[dict[str, Any]], path: str, parent: int | None) -> None:
        nonlocal count, text
        top = parent is None
        for i, item in enumerate(items):
            where = f"{path}.{i}"
            kind = item.get("type")
            if kind not in (V2_TOP_LEVEL if top else V2_KNOWN):
                raise form_error(
                    f"{where}.type",
                    "UNION_TYPE_CHOICES",
                    f'Value of field "type" must be one of {sorted(V2_TOP_LEVEL if top else V2_KNOWN)}.',
                )
            _check_v2_item(item, where, parent)
            count += 1
            if kind == 10:
                text += len(str(item.get("content") or ""))
            if kind == 12 and not 1 <= len(item.get("items") or []) <= 10:
                raise form_error(f"{where}.items", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 10 in length.")
            custom_id = item.get("custom_id")
            if custom_id is not None:
                if custom_id in seen:
                    raise form_error(
                        f"{where}.custom_id",
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                seen.add(custom_id)
            walk(item.get("components") or [], f"{where}.components", kind)
            if isinstance(item.get("accessory"), dict):
                walk([item["accessory"]], f"{where}.accessory", -1)

    walk(payload.get("components") or [], "components", None)
    if count > V2_MAX_COMPONENTS:
        raise form_error("components", "BASE_TYPE_MAX_LENGTH", f"Must be {V2_MAX_COMPONENTS} or fewer in length.")
    if text > V2_TEXT_TOTAL:
        raise form_error(
            "components",
            "MAX_TEXT_DISPLAY_CONTENT_LENGTH",
            f"The total text display content must be {V2_TEXT_TOTAL} or fewer in length.",
        )


def check_allowed_mentions(allowed: Any) -> None:
    if allowed is None:
        return
    parse = set(allowed.get("parse") or [])
    if not parse <= {"users", "roles", "everyone"}:
        raise form_error("allowed_mentions.parse", "ENUM_TYPE_COERCE", "Value is not a valid enum value.")
    if "users" in parse and allowed.get("users"):
        raise form_error(
            "allowed_mentions",
            "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
            'parse:["users"] and users: [ids...] are mutually exclusive.',
        )
    if "roles" in parse and allowed.get("roles"):
        raise form_error(
            "allowed_mentions",
            "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
            'parse:["roles"] and roles: [ids...] are mutually exclusive.',
        )


def check_payload(payload: dict[str, Any], existing_flags: int = 0) -> None:
    """Everything that can be checked on a create/edit body by itself (`existing_flags`: the edited message's;
    a V2 message stays V2)."""
    check_content(payload.get("content"))
    check_embeds(payload.get("embeds"))
    if (int(payload.get("flags") or 0) | existing_flags) & IS_COMPONENTS_V2:
        check_components_v2(payload)
        check_allowed_mentions(payload.get("allowed_mentions"))
        return
    check_components(payload.get("components"))
    check_allowed_mentions(payload.get("allowed_mentions"))


def is_empty(
    content: str, embeds: list[Any], attachments: list[Any], components: list[Any], extra: dict[str, Any] | None = None
) -> bool:
    extra = extra or {}
    return not (
        (content or "").strip() or embeds or attachments or components or extra.get("sticker_ids") or extra.get("poll")
    )


def autocomplete_choices(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The choices of an APPLICATION_COMMAND_AUTOCOMPLETE_RESULT (callback type 8), checked as Discord documents
    them: at most 25, each with a name of 1-100 characters and a string value of at most 100 (or a number)."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise form_error("data.choices", "BASE_TYPE_REQUIRED", "This field is required")
    if len(choices) > 25:
        raise form_error("data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    for i, choice in enumerate(choices):
        name, value = choice.get("name"), choice.get("value")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise form_error(f"data.choices.{i}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if isinstance(value, str):
            if len(value) > 100:
                raise form_error(
                    f"data.choices.{i}.value", "BASE_TYPE_BAD_LENGTH", "Must be between 0 and 100 in length."
                )
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise form_error(f"data.choices.{i}.value", "BASE_TYPE_REQUIRED", "This field is required")
    return choices
