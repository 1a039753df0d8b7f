"""Images on Discord: attachments on chat messages, `/caption`, and `/article` illustrated articles.

* Attachments (here and on chat messages) go through the bot's image intake (bot/attachments.py): refused
  from their declared size before anything is downloaded, downloaded by the bot (workers never see Discord
  URLs), validated and stored as blobs.  Refusals are translated by bot/refusals.py.
* `/caption image:<attachment> [question]` — a detailed caption, or an answer about the image; deferred,
  streamed like a chat answer, and part of the channel's conversation (follow-ups still see the image).
* `/article title [image1..image4] [paragraphs]` — InternLM-XComposer's composition: the text streams
  first with the stages shown, then the article is posted as a sequence of messages with each image
  attached right after the paragraph the model chose (`handlers.article.plan_posts`), every message
  within Discord's 2,000 characters.  Without images, suggested picture captions appear in italics.
  With RENDER_MODE=components the draft becomes the article itself, one Components V2 message (a container
  of text displays with each image in a media gallery between its paragraphs, bot/article_pages.py), split
  only where Discord's limits make it.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from handlers.article import ArticleHandler, Post, plan_posts
from handlers.types import Update

from .. import i18n
from ..access import admit
from ..article_pages import page_view, plan_pages
from ..attachments import as_attachment
from ..conversations import request_for
from ..renderer import Renderer
from ..replies import components_for, stream_reply
from ..targets import NO_MENTIONS, InteractionTarget

if TYPE_CHECKING:
    from ..client import InternLMBot

log = logging.getLogger(__name__)

i18n.register(
    {
        "article_write": {i18n.EN: "✍️ *writing the article…*", i18n.ZH: "✍️ *正在撰写文章…*"},
        "article_place": {i18n.EN: "🖼️ *choosing where the pictures go…*", i18n.ZH: "🖼️ *正在为图片选择位置…*"},
        "article_captions": {i18n.EN: "🖼️ *suggesting pictures…*", i18n.ZH: "🖼️ *正在构思配图…*"},
        "article_header": {
            i18n.EN: "📝 **{title}** — the illustrated article follows ⬇️",
            i18n.ZH: "📝 **{title}** — 图文并茂的文章如下 ⬇️",
        },
        "article_no_retrieval": {
            i18n.EN: "*Suggested pictures are shown in italics.*",
            i18n.ZH: "*斜体为建议的配图。*",
        },
    }
)
i18n.register_commands(
    {
        "caption": "看图",
        "Describe an image, or ask a question about it": "描述图片，或就图片提问",
        "image": "图片",
        "The image (PNG, JPEG, WebP or GIF)": "图片（PNG、JPEG、WebP 或 GIF）",
        "question": "问题",
        "What to ask about the image (empty: a detailed caption)": "关于图片的问题（留空则生成详细描述）",
        "article": "图文创作",
        "Write an illustrated article (InternLM-XComposer)": "创作图文并茂的文章（浦语·灵笔）",
        "title": "标题",
        "The article's title or topic": "文章的标题或主题",
        "paragraphs": "段落数",
        "How many paragraphs (optional)": "段落数量（可选）",
        "image1": "图片1",
        "image2": "图片2",
        "image3": "图片3",
        "image4": "图片4",
        "An image to place in the article": "放入文章的图片",
        "notes": "资料",
        "Source notes for the article: a text file (.txt, .md, .csv …)": (
            "文章的参考资料：文本文件（.txt、.md、.csv …）"
        ),
    }
)


class ArticleRenderer(Renderer):
    """Shows the stage line above the article text while it is written and placed."""

    STAGES = {"write": "article_write", "place": "article_place", "captions": "article_captions"}

    def __init__(self, lang: str = i18n.EN) -> None:
        super().__init__(lang)
        self.stage = "article_write"

    def render(self, update: Update) -> str | None:
        if update.kind == "step":
            key = self.STAGES.get(str(update.data.get("stage")))
            if key is None:
                return None
            self.stage = key
            return self.body()
        if update.kind == "text":
            self.answer = update.text
            return self.body()
        return super().render(update)

    def body(self) -> str:
        return f"{i18n.t(self.stage, self.lang)}\n\n{self.answer}".rstrip()


class Images(commands.Cog):
    """Captions, visual Q&A and illustrated articles."""

    def __init__(self, bot: InternLMBot) -> None:
        self.bot = bot
        self.articles = ArticleHandler(bot.runtime.chat)

    # ---------------------------------------------------------------- /caption
    @app_commands.command(
        name=locale_str("caption"), description=locale_str("Describe an image, or ask a question about it")
    )
    @app_commands.rename(image=locale_str("image"), question=locale_str("question"))
    @app_commands.describe(
        image=locale_str("The image (PNG, JPEG, WebP or GIF)"),
        question=locale_str("What to ask about the image (empty: a detailed caption)"),
    )
    async def caption_command(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        question: app_commands.Range[str, 0, 4000] | None = None,
    ) -> None:
        lang = i18n.lang_for(interaction=interaction)
        question = (question or "").strip()
        await admit(self.bot, interaction, question, lang)
        await interaction.response.defer(thinking=True)
        refs = await self.bot.images.ingest([image])
        reply = await self.bot.images.vision.ask(request_for(interaction, question), refs)
        await stream_reply(self.bot, reply, InteractionTarget(interaction), lang=lang, owner=interaction.user.id)

    # ---------------------------------------------------------------- /article
    @app_commands.command(
        name=locale_str("article"), description=locale_str("Write an illustrated article (InternLM-XComposer)")
    )
    @app_commands.rename(
        title=locale_str("title"),
        paragraphs=locale_str("paragraphs"),
        image1=locale_str("image1"),
        image2=locale_str("image2"),
        image3=locale_str("image3"),
        image4=locale_str("image4"),
        notes=locale_str("notes"),
    )
    @app_commands.describe(
        title=locale_str("The article's title or topic"),
        notes=locale_str("Source notes for the article: a text file (.txt, .md, .csv …)"),
        paragraphs=locale_str("How many paragraphs (optional)"),
        image1=locale_str("An image to place in the article"),
        image2=locale_str("An image to place in the article"),
        image3=locale_str("An image to place in the article"),
        image4=locale_str("An image to place in the article"),
    )
    async def article_command(
        self,
        interaction: discord.Interaction,
        title: app_commands.Range[str, 1, 300],
        image1: discord.Attachment | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        paragraphs: app_commands.Range[int, 1, 20] | None = None,
        notes: discord.Attachment | None = None,
    ) -> None:
        lang = i18n.lang_for(interaction=interaction)
        await admit(self.bot, interaction, title, lang)
        if notes is not None:  # refused privately, from what is declared, before anything is downloaded
            self.bot.images.text_files.check([as_attachment(notes)])
        await interaction.response.defer(thinking=True)
        attachments = [a for a in (image1, image2, image3, image4) if a is not None]
        refs = await self.bot.images.ingest(attachments) if attachments else []
        texts = await self.bot.images.read_text_files([notes]) if notes is not None else []
        reply = await self.articles.ask(request_for(interaction, ""), title, refs, paragraphs, notes=texts)
        target = InteractionTarget(interaction)
        result = await stream_reply(
            self.bot, reply, target, lang=lang, renderer=ArticleRenderer(lang), owner=interaction.user.id
        )
        await self.notes_cut(interaction, result.final, lang)
        final = result.final
        if final is None or final.kind != "done" or final.data.get("stopped") or not final.data.get("layout"):
            return  # errors and stops are already shown by the streamer
        if components_for(self.bot, reply):  # the mode the draft was streamed in
            await self.post_article_layout(
                target, result.messages, str(final.data.get("title") or title), final.data["layout"], refs, lang
            )
            return
        posts = plan_posts(final.data["layout"], "", refs)
        await self.post_article(target, result.messages, str(final.data.get("title") or title), posts, lang)

    async def post_article_layout(
        self,
        target: InteractionTarget,
        streamed: list[Any],
        title: str,
        layout: list[dict[str, Any]],
        refs: list[str],
        lang: str,
    ) -> None:
        """Components mode: the streamed draft becomes the article (its first page), images in galleries."""
        names: dict[str, str] = {}
        data: dict[str, bytes] = {}
        for number, ref in enumerate(refs, start=1):
            blob = await self.bot.runtime.bus.get_blob(ref)
            if blob is not None:
                names[ref] = f"image{number}.{'jpg' if blob[1] == 'image/jpeg' else 'png'}"
                data[ref] = blob[0]
        header = f"## {discord.utils.escape_markdown(title)}"
        if any(b.get("type") == "caption" for b in layout):
            header += "\n-# " + i18n.t("article_no_retrieval", lang)
        pages = plan_pages(layout, header, names)
        bucket = self.bot.buckets.get(target.channel_id)
        try:
            for index, page in enumerate(pages):
                files = [discord.File(io.BytesIO(data[ref]), filename=name) for ref, name in page.files]
                await bucket.acquire(priority=True)
                if index == 0 and streamed:
                    await target.edit(streamed[0], "", view=page_view(page), files=files)
                    for handle in streamed[1:]:  # overflow messages of the draft
                        await bucket.acquire()
                        await target.delete(handle)
                else:
                    await target.send("", view=page_view(page), files=files or None)
        except discord.HTTPException as exc:
            log.warning("posting article failed: %s", exc)

    async def notes_cut(self, interaction: discord.Interaction, final: Update | None, lang: str) -> None:
        """Tell the person, privately, how much of their notes the model read, where it was not all of it
        (the text-file budget, then the model's context: models/jobs/article.py `fit_notes`)."""
        read = final.data.get("notes") if final is not None else None
        cut = [n for n in read or [] if isinstance(n, dict) and n.get("kept", 0) < n.get("total", 0)]
        if not cut:
            return
        text = "\n".join(
            i18n.t("textfile_cut", lang, name=str(n.get("name")), kept=int(n["kept"]), total=int(n["total"]))
            for n in cut
        )
        await self.bot.buckets.get(interaction.channel_id or 0).acquire()
        try:
            await interaction.followup.send(text[:2000], ephemeral=True, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            log.warning("could not send the notes note: %s", exc)

    async def post_article(
        self, target: InteractionTarget, streamed: list[Any], title: str, posts: list[Post], lang: str
    ) -> None:
        """Replace the streamed draft by a header, then post the article with the images in place."""
        bucket = self.bot.buckets.get(target.channel_id)
        header = i18n.t("article_header", lang, title=discord.utils.escape_markdown(title))
        if any(p.image is None and "*🖼️" in p.text for p in posts):
            header += "\n" + i18n.t("article_no_retrieval", lang)
        try:
            if streamed:
                await bucket.acquire(priority=True)
                await target.edit(streamed[0], header[:2000], view=None)
                for handle in streamed[1:]:  # overflow messages of the draft
                    await bucket.acquire()
                    await target.delete(handle)
            for post in posts:
                files = []
                if post.image:
                    blob = await self.bot.runtime.bus.get_blob(post.image)
                    if blob is not None:
                        data, mime = blob
                        ext = "jpg" if mime == "image/jpeg" else "png"
                        files.append(discord.File(io.BytesIO(data), filename=f"image{post.image_number or 1}.{ext}"))
                if not post.text and not files:
                    continue
                await bucket.acquire(priority=True)
                await target.send(post.text, files=files or None)
        except discord.HTTPException as exc:
            log.warning("posting article failed: %s", exc)


async def setup(bot: InternLMBot) -> None:
    await bot.add_cog(Images(bot))
