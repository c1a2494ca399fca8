"""Request bodies of the OpenAI-compatible API, as pydantic models.

Only request bodies are modelled: they are where validation (and its 400 errors) happens.
Unknown fields are rejected, as the OpenAI API does, so a typo in a parameter name is an error
and not a silently ignored setting. Sampling parameters the engine does not implement
(penalties, logit_bias, best_of, echo, suffix) are accepted only at their neutral values.

Types are strict, as the JSON Schema in ``/openapi.json`` states them: ``true`` is not the
integer 1 and ``"yes"`` is not a boolean. Text may not hold NUL characters (PostgreSQL cannot
store them) or unpaired surrogates (``"\\ud800"`` is valid JSON but not Unicode text, and neither
the tokenizer nor UTF-8 can take it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from catalog.models import COMPLETION_ID_CHARS, NOTE_CHARS, USER_CHARS


def _text_problem(v: Any) -> str | None:
    """What is wrong with the text in ``v`` (a string, or strings nested in lists and dicts), if anything."""
    if isinstance(v, str):
        if "\x00" in v:
            return "must not contain NUL characters"
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "must be Unicode text (it holds an unpaired surrogate such as \\ud800)"
    elif isinstance(v, list):
        return next((p for x in v if (p := _text_problem(x))), None)
    elif isinstance(v, dict):
        return next((p for k, x in v.items() if (p := _text_problem(k) or _text_problem(x))), None)
    return None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _text(cls, v: Any) -> Any:
        if problem := _text_problem(v):
            raise ValueError(problem)
        return v


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="A 64-bit signed integer.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # The column's size, so a value the API accepts always fits the catalog (catalog.models).
    user: str | None = Field(None, max_length=USER_CHARS)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _neutral(self) -> _Sampling:
        if self.presence_penalty or self.frequency_penalty or self.logit_bias:
            raise ValueError(
                "presence_penalty, frequency_penalty and logit_bias are not supported; leave them unset"
            )
        return self

    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())  # type: ignore[arg-type]


class StreamOptions(_Body):
    include_usage: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.echo or self.suffix or (self.best_of not in (None, 1)):
            raise ValueError("echo, suffix and best_of are not supported; leave them unset")
        return self


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ContentPart(_Body):
    type: Literal["text"]
    text: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)

    @model_validator(mode="after")
    def _tokens(self) -> ChatCompletionRequest:
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self


class FeedbackRequest(_Body):
    """A rating of one completion, or a preference between two.

    ``preferred`` names the better one: ``"a"`` is ``completion_id``, ``"b"`` is ``other_completion_id``.
    """

    completion_id: str = Field(min_length=1, max_length=COMPLETION_ID_CHARS)
    rating: int | None = Field(None, ge=-1, le=5)
    other_completion_id: str | None = Field(None, min_length=1, max_length=COMPLETION_ID_CHARS)
    preferred: Literal["a", "b"] | None = None
    unsafe: bool = False
    note: str | None = Field(None, max_length=NOTE_CHARS)
    user: str | None = Field(None, max_length=USER_CHARS, description="Data only; the labeller is the key.")

    @model_validator(mode="after")
    def _kind(self) -> FeedbackRequest:
        if self.other_completion_id is None:
            if self.preferred is not None:
                raise ValueError("preferred needs other_completion_id (the second completion)")
            if self.rating is None and not self.unsafe:
                raise ValueError("give a rating, unsafe: true, or other_completion_id with preferred")
        else:
            if self.preferred is None:
                raise ValueError("a comparison needs preferred: 'a' or 'b'")
            if self.other_completion_id == self.completion_id:
                raise ValueError("other_completion_id must differ from completion_id")
        return self

    @property
    def kind(self) -> str:
        return "preference" if self.other_completion_id else "rating"


CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
ChatMessage.model_rebuild()
