"""models/reasoning.py: thinking split from the answer, the shapes reasoning models really produce.

Shapes: `<think>…</think>answer` as InternLM3 / Intern-S1 (thinking mode) and DeepSeek-R1 write it; lmdeploy's
reasoning parser sends the thinking as `reasoning_content` and `content` '' while thinking (lmdeploy
serve/openai/api_server.py, streaming branch of chat_completions_v1: `delta_message.reasoning_content =
reasoning_delta.reasoning_content; delta_message.content = reasoning_delta.content or ''`), which the OpenAI
engine is to fold back into this prefix; a model that never closes `<think>`; tags cut across deltas.
"""

from models.reasoning import split


def test_thinking_then_answer():
    s = split("<think>\nLet me add 2 and 2.\n</think>\n\nThe answer is 4.")
    assert (s.thinking, s.answer, s.closed, s.unanswered) == ("Let me add 2 and 2.", "The answer is 4.", True, False)


def test_plain_answer_and_think_tag_later_are_answer():
    assert split("Hello there").answer == "Hello there"
    later = "Use <think> tags like this: <think>x</think>"
    assert split(later) == split(later).__class__("", later)


def test_unclosed_think_is_thinking_with_no_answer():
    s = split("<think>I keep thinking and never stop")
    assert s.thinking == "I keep thinking and never stop" and s.answer == "" and not s.closed and s.unanswered


def test_tags_cut_across_deltas_are_held_back():
    assert split("<thi").answer == "" and split("<thi").thinking == ""
    assert split("<think>pondering</thi").thinking == "pondering"
    grown = split("<think>pondering</think>Done")
    assert grown.thinking == "pondering" and grown.answer == "Done"


def test_empty_thinking_then_answer():
    s = split("<think>\n\n</think>\n\nHi!")
    assert s.thinking == "" and s.answer == "Hi!" and not s.unanswered
