"""One base model, many adapters, one thread that owns them.

Requests wait in a bounded queue. The engine thread takes the oldest and, with it, every waiting request that can
share its forward pass - LoRA adapters and the bare base mix in one batch, each row through its own adapter
(stacked_lora.py: two batched products per layer, whatever the number of adapters);
a DoRA adapter runs alone (PEFT cannot mix it), an AdaLoRA adapter as its own merged copy (a different PEFT
tuner) - and decodes them together with one KV cache, streaming each row's tokens as they come. A finished or
abandoned row leaves the batch (its cache rows are dropped), so the rest run on at the smaller size.

Adapters are loaded and evicted only by this thread, between batches, so no forward pass ever sees a half-loaded
adapter; at most `max_loaded` stay in memory (least recently used out first, never one a queued or running request
holds)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field

import torch

from ..data.tokenize import end_of_turn_ids
from ..errors import UserError
from ..models.loading import load_base
from .adapters import BASE_KEY, Resolved
from .text_stream import TextStream

MERGED_METHODS = ("adalora", "ia3")  # other PEFT tuners than LoRA: one PeftModel holds one tuner type


class QueueFull(Exception):
    pass


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stops: tuple[str, ...] = ()


@dataclass
class Request:
    prompt_ids: list[int]
    target: Resolved
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    completion_tokens: int = 0

    def send(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the server's loop is gone (shutting down): nobody is listening
            pass


@dataclass
class _Row:
    request: Request
    stream: TextStream
    generator: torch.Generator | None
    last_position: int


class Engine:
    def __init__(self, base_spec: str, dtype: str = "auto", device: str = "cpu", max_loaded: int = 8,
                 max_batch: int = 16, max_queue: int = 64, batch_wait_s: float = 0.01, quantize: str | None = None,
                 say=print):
        self.base_spec, self.dtype, self.device, self.quantize = base_spec, dtype, device, quantize
        loaded = load_base(base_spec, dtype, device)
        self.base, self.tokenizer = self._quantised(loaded.model).eval(), loaded.tokenizer
        self.peft = None  # a PeftModel over self.base once the first LoRA/DoRA adapter is loaded
        self.stacked = None  # the batched adapters stacked per layer, for mixed batches
        self.merged: dict[str, torch.nn.Module] = {}  # AdaLoRA: key -> its own merged model
        self.loaded: collections.OrderedDict[str, Resolved] = collections.OrderedDict()  # LRU order
        self.pins: collections.Counter[str] = collections.Counter()
        self.max_loaded, self.max_batch, self.max_queue, self.batch_wait_s = max_loaded, max_batch, max_queue, batch_wait_s
        self.context = int(getattr(self.base.config, "max_position_embeddings", 2048))
        self.eot = end_of_turn_ids(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eot)
        self.say = say
        self.waiting: collections.deque[Request] = collections.deque()
        self.controls: collections.deque = collections.deque()
        self.running = 0
        self.batches = 0
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="leantune-engine", daemon=True)
        self.notes: list[str] = []

    def _quantised(self, model):
        """--quantize int4: the base's linear layers in int4 (the export's format and kernel, bf16 activations);
        adapters stay in their own precision beside them (peft's torchao LoRA layer)."""
        if self.quantize != "int4":
            return model
        from ..export import int4_format

        group = int4_format.group_size_for(model)
        if group is None:
            raise UserError("--quantize int4 needs every linear layer's input width to be a multiple of 32, 64 or 128.")
        int4_format.quantise(model, group)
        return model

    # ---- called from the server's event loop --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request: Request) -> None:
        with self._cv:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (--max-queue {self.max_queue}); retry shortly.")
            self.pins[request.target.key] += 1
            self.waiting.append(request)
            self._cv.notify_all()

    def control(self, fn) -> asyncio.Future:
        """Run fn() on the engine thread between batches; the future gets its result or exception."""
        future = asyncio.get_running_loop().create_future()
        loop = future.get_loop()

        def run():
            try:
                result = fn()
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))
            except Exception as e:  # noqa: BLE001 - handed to the caller
                loop.call_soon_threadsafe(lambda e=e: future.done() or future.set_exception(e))

        with self._cv:
            self.controls.append(run)
            self._cv.notify_all()
        return future

    def queue_depth(self) -> int:
        return len(self.waiting)

    # ---- engine thread ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.controls:
                    self._cv.wait()
                if self._stop:
                    break
                controls = list(self.controls)
                self.controls.clear()
            for run in controls:
                run()
            batch = self._take_batch()
            if batch:
                self._serve(batch)
        for request in list(self.waiting):
            request.send("error", 503, "The server is shutting down.")

    def _take_batch(self) -> list[Request]:
        with self._cv:
            while self.waiting and self.waiting[0].cancelled:
                self._release(self.waiting.popleft())
            if not self.waiting:
                return []
        if len(self.waiting) < self.max_batch and self.batch_wait_s:
            time.sleep(self.batch_wait_s)  # let requests that arrive together share the pass
        with self._cv:
            first = self.waiting[0]
            lane = "batched" if first.target.batched else first.target.key
            batch, kept = [], collections.deque()
            for request in self.waiting:
                same = (request.target.batched if lane == "batched" else request.target.key == lane)
                if request.cancelled:
                    self._release(request)
                elif same and len(batch) < self.max_batch:
                    batch.append(request)
                else:
                    kept.append(request)
            self.waiting = kept
            self.running = len(batch)
        return batch

    def _release(self, request: Request) -> None:
        self.pins[request.target.key] -= 1
        if self.pins[request.target.key] <= 0:
            del self.pins[request.target.key]

    # adapters ---------------------------------------------------------------------------------------------------
    def ensure_loaded(self, target: Resolved) -> None:
        if target.key == BASE_KEY:
            return
        if target.key in self.loaded:
            self.loaded.move_to_end(target.key)
            return
        while len(self.loaded) >= self.max_loaded:
            victim = next((k for k in self.loaded if self.pins[k] <= 0 and k != target.key), None)
            if victim is None:
                break  # every loaded adapter is in use: go over the limit until one is free
            self.evict(victim)
        from peft import PeftModel

        started = time.perf_counter()
        if target.method in MERGED_METHODS:
            copy = load_base(self.base_spec, self.dtype, self.device).model
            merged = PeftModel.from_pretrained(copy, target.path).merge_and_unload()
            self.merged[target.key] = self._quantised(merged).eval()  # merged in float, then quantised
            how = (f"{target.method}: merged into its own copy of the base (a different PEFT tuner from LoRA), "
                   "served unbatched")
        else:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, target.path, adapter_name=target.key)
            else:
                self.peft.load_adapter(target.path, adapter_name=target.key)
            self.peft.eval()
            how = "batched with the others" if target.batched else "DoRA: served unbatched (PEFT cannot mix it)"
        if target.method == "qlora":
            how += "; QLoRA: applied over the float base (it trained over the NF4-rounded one)"
        self.loaded[target.key] = target
        if target.key not in self.merged:
            self._restack()  # a merged copy has no place in the stacks
        self.say(f"loaded {target.label} [{target.key}] in {time.perf_counter() - started:.1f}s: {how}")

    def evict(self, key: str) -> None:
        target = self.loaded.pop(key, None)
        if target is None:
            return
        if key in self.merged:
            del self.merged[key]
        elif self.peft is not None:
            self.peft.delete_adapter(key)
            self._restack()
        self.say(f"unloaded {target.label} [{key}]")

    def _restack(self) -> None:
        """The batched adapters' weights into one stack per layer (serve/stacked_lora.py)."""
        if self.peft is None:
            return
        from .stacked_lora import StackedLoRA

        if self.stacked is None:
            self.stacked = StackedLoRA(self.peft)
        self.stacked.rebuild([k for k, t in self.loaded.items() if t.batched and k not in self.merged])

    def unload_unpinned(self, keys: set[str]) -> None:
        for key in keys:
            if self.pins[key] <= 0:
                self.evict(key)

    # decoding ---------------------------------------------------------------------------------------------------
    def _serve(self, batch: list[Request]) -> None:
        self.batches += 1
        try:
            for request in batch:
                self.ensure_loaded(request.target)
            self._decode(batch)
        except Exception as e:  # noqa: BLE001 - one bad batch must not stop the server
            for request in batch:
                request.send("error", 500, f"generation failed: {type(e).__name__}: {e}")
        finally:
            with self._cv:
                for request in batch:
                    self._release(request)
                self.running = 0

    def _model_and_names(self, batch: list[Request]):
        """(model, per-row adapter names or None, context to run in). One adapter for the whole batch takes PEFT's
        plain path (the active adapter, or adapters off for the base): its mixed-batch path splits every LoRA
        layer's input by adapter, which costs more per step than one adapter needs."""
        target = batch[0].target
        if target.key in self.merged:
            return self.merged[target.key], None, contextlib.nullcontext()
        if self.peft is None:
            return self.base, None, contextlib.nullcontext()
        keys = {r.target.key for r in batch}
        if len(keys) == 1:
            if target.key == BASE_KEY:
                return self.peft, None, self.peft.disable_adapter()
            self.peft.set_adapter(target.key)  # DoRA always comes here: PEFT cannot mix it
            return self.peft, None, contextlib.nullcontext()
        return self.peft, [r.target.key for r in batch], contextlib.nullcontext()

    @torch.no_grad()
    def _decode(self, batch: list[Request]) -> None:
        model, names, context = self._model_and_names(batch)
        with context:
            self._decode_rows(model, names, batch)

    def _decode_rows(self, model, names, batch: list[Request]) -> None:
        rows = []
        for request in batch:
            s = request.sampling
            generator = None
            if s.temperature > 0:
                generator = torch.Generator(device="cpu")
                generator.manual_seed(s.seed if s.seed is not None else torch.seed())
            rows.append(_Row(request, TextStream(self.tokenizer, s.stops), generator, len(request.prompt_ids) - 1))
        width = max(len(r.request.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every row's last prompt token is in the last column
            p = row.request.prompt_ids
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache()
        with self._rows(names):
            logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=positions.to(self.device), past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1].float().cpu()
        while rows:
            tokens, keep = [], []
            for i, row in enumerate(rows):
                request = row.request
                if request.cancelled:
                    continue
                token = self._pick(logits[i], request.sampling, row.generator)
                request.completion_tokens += 1
                if request.first_token_s is None:
                    request.first_token_s = time.perf_counter() - request.submitted
                finish = None
                if token in self.eot:
                    finish = "stop"
                else:
                    delta = row.stream.push(token)
                    if delta:
                        request.send("delta", delta)
                    if row.stream.stopped:
                        finish = "stop"
                    elif request.completion_tokens >= request.sampling.max_tokens or row.last_position + 2 >= self.context:
                        finish = "length"
                if finish:
                    tail = row.stream.finish()
                    if tail:
                        request.send("delta", tail)
                    request.send("done", finish, len(request.prompt_ids), request.completion_tokens)
                    continue
                tokens.append(token)
                keep.append(i)
            if not keep:
                break
            if len(keep) < len(rows):  # finished and abandoned rows leave the batch and the cache
                index = torch.tensor(keep)
                cache.batch_select_indices(index.to(self.device))
                mask = mask[index]
                rows = [rows[i] for i in keep]
                if names:
                    names = [names[i] for i in keep]
            for row in rows:
                row.last_position += 1
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = torch.tensor([[r.last_position] for r in rows])
            with self._rows(names):
                logits = model(input_ids=torch.tensor([[t] for t in tokens], device=self.device),
                               attention_mask=mask.to(self.device), position_ids=positions.to(self.device),
                               past_key_values=cache, use_cache=True).logits[:, -1].float().cpu()

    def _rows(self, names):
        """A mixed batch: each row through its own adapter (stacked_lora.py); otherwise nothing to set."""
        return self.stacked.batch(names, self.device) if names else contextlib.nullcontext()

    @staticmethod
    def _pick(logits: torch.Tensor, s: Sampling, generator) -> int:
        if s.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > s.top_p  # keep the smallest set reaching top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))


_ids = itertools.count(1)


def next_id(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000):x}{next(_ids):04x}"
