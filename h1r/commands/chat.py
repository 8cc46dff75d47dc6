"""`h1r chat`: a conversation with a model in the terminal, streamed token by token.

Lines starting with `/` are commands: /reset (forget the conversation), /exit. Reads stdin, so a
file or a pipe of user turns works too (one turn per line). Ctrl-C stops the current answer only.
"""

from __future__ import annotations

import sys

from h1r.commands.generate import add_engine_args, add_sampling_args, build_llm, build_params
from h1r.engine import SamplingError
from h1r.errors import H1RError

HELP = "/reset forgets the conversation, /exit quits; Ctrl-C stops an answer"


def add_parser(sub):
    p = sub.add_parser("chat", help="chat with a model in the terminal",
                       description=f"Chat with a model through its chat template. {HELP}.")
    p.add_argument("--system", default=None, help="system message at the start of the conversation")
    p.add_argument("--hide-reasoning", action="store_true",
                   help="do not print the <think>...</think> part of answers")
    add_engine_args(p)
    add_sampling_args(p, max_tokens=1024)
    p.set_defaults(func=run)


def final_answer(text: str) -> str:
    """What goes back into the history: the part after the reasoning (the template drops it anyway)."""
    return text.split("</think>")[-1].strip()


class ReasoningFilter:
    """Drops streamed text between <think> and </think> (the tags may arrive split across pieces)."""

    def __init__(self):
        self.buf, self.inside = "", False

    def feed(self, piece: str) -> str:
        self.buf += piece
        out = ""
        while True:
            tag = "</think>" if self.inside else "<think>"
            j = self.buf.find(tag)
            if j < 0:
                keep = len(tag) - 1  # a tag may be starting at the end of the buffer
                head, self.buf = self.buf[:max(0, len(self.buf) - keep)], self.buf[max(0, len(self.buf) - keep):]
                return out + ("" if self.inside else head)
            if not self.inside:
                out += self.buf[:j]
            self.buf, self.inside = self.buf[j + len(tag):], not self.inside

    def flush(self) -> str:
        rest, self.buf = ("" if self.inside else self.buf), ""
        return rest


def run(args) -> int:
    if args.n != 1:
        raise H1RError("h1r chat answers with one sample: --n must be 1")
    llm = build_llm(args)
    if not llm.tokenizer.chat_template:
        raise H1RError(f"{args.model}: the tokenizer has no chat_template; use `h1r generate --raw` instead")
    params = build_params(args, llm.tokenizer)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    tty = sys.stdin.isatty()
    if tty:
        print(f"h1r chat with {args.model} ({HELP})", file=sys.stderr)
    while True:
        if tty:
            print("\n> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            print("(conversation reset)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        ids = llm.tokenizer.apply_chat_template(system + history, tokenize=True)
        answer, shown = [], ReasoningFilter() if args.hide_reasoning else None
        try:
            for _, piece in llm.stream(ids, params):
                answer.append(piece)
                sys.stdout.write(shown.feed(piece) if shown else piece)
                sys.stdout.flush()
        except SamplingError as e:  # e.g. the conversation outgrew the context: say so, keep the session
            history.pop()
            print(f"error: {e} (/reset starts a new conversation)", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print("\n(stopped)", file=sys.stderr)
        if shown:
            sys.stdout.write(shown.flush())
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": final_answer("".join(answer))})
    return 0
