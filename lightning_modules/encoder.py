"""The shared contrastive encoder: one backbone, two towers, a mask, pooling and a projector.

User tower: history + query + ``<USER>`` under the configured mask. Answer tower: the answer
text ending in ``<eos>``, under ``answer_mask`` (``same``: the user tower's mask, with the
answer's content as history and its final token as anchor; or ``causal`` / ``bidirectional``).
Both towers share the backbone and the projector (hidden -> 512 -> 128, GELU) and end
L2-normalised.

Pooling (user tower; the answer tower reads its last real token wherever the user tower reads
one token):
    user_token     hidden state at the <USER> anchor (the paper)
    last           hidden state at the last real token (= <USER> with the standard template)
    mean           mean over real tokens (the authors' demo code)
    weighted_mean  position-weighted mean over real tokens, weight proportional to position
    global_token   hidden state at the global-query token (masks with ``global_token``)

A mask with ``global_token`` (hybrid (c)) makes the encoder own one learnable vector that it
inserts into every user sequence just before the first real token, with segment id ``GLOBAL``;
hidden states, attention masks and segment ids of the user tower then have length L + 1.

Hierarchical input (``input_layer``, ``lightning_modules/hierarchical.py``): the user tower's
``slots`` (the batch's ``user_slot_*`` and ``user_event_*`` fields) turn placeholder positions
into event, modality, user and tabular tokens before the backbone; the answer tower stays text.

Joint next-token loss (``lightning_modules/ntp.py``): the user tower may read the answer after
the anchor in the same forward (``answer``); the prefix never sees it, and ``lm_head`` (the
pretrained model's own head, an untied ``nn.Linear``, or None for logits from the tied input
embedding) turns the states before each answer token into its logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import FLEX, FlexBias, flex_bias, flex_scores, layer_biases, record_future_attention
from .masks import (
    ANCHOR, GLOBAL, HISTORY, AttentionMask, BidirectionalMask, CausalMask, last_index,
)
from .ntp import answer_positions, joint_bias

POOLINGS = ("user_token", "last", "mean", "weighted_mean", "global_token")
SINGLE_TOKEN_POOLINGS = ("user_token", "last", "global_token")
ANSWER_MASKS = ("same", "causal", "bidirectional")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str,
         segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H) pooled hidden states. ``user_token`` (``global_token``) needs segment ids with one
    anchor (global token) per row."""
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if how in ("user_token", "global_token"):
        if segment_ids is None:
            raise ValueError(f"{how} pooling needs segment_ids")
        index = (segment_ids == (ANCHOR if how == "user_token" else GLOBAL)).long().argmax(-1)
        return hidden[batch, index]
    if how == "last":
        return hidden[batch, last_index(attention_mask)]
    mask = attention_mask.to(hidden.dtype)
    if how == "weighted_mean":
        mask = mask * mask.cumsum(-1)
    elif how != "mean":
        raise ValueError(f"unknown pooling {how!r}: expected one of {POOLINGS}")
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-9)


def insert_global_token(embeds: torch.Tensor, attention_mask: torch.Tensor,
                        segment_ids: torch.Tensor, token: torch.Tensor):
    """Inserts ``token`` (H,) before each row's first real token (right or left padding):
    (embeds (B, L+1, H), attention_mask (B, L+1), segment_ids (B, L+1)), the new position
    with segment ``GLOBAL``."""
    batch, length, width = embeds.shape
    first = attention_mask.long().argmax(-1, keepdim=True)  # (B, 1)
    old = torch.arange(length, device=embeds.device)[None]
    dest = old + (old >= first).long()  # where each old position moves
    is_global = torch.arange(length + 1, device=embeds.device)[None] == first  # (B, L+1)
    moved = embeds.new_zeros(batch, length + 1, width).scatter(
        1, dest[..., None].expand(-1, -1, width), embeds)
    out = torch.where(is_global[..., None], token.to(embeds.dtype), moved)
    att = attention_mask.new_zeros(batch, length + 1).scatter(1, dest, attention_mask)
    seg = segment_ids.new_zeros(batch, length + 1).scatter(1, dest, segment_ids)
    return out, att.masked_fill(is_global, 1), seg.masked_fill(is_global, GLOBAL)


def check_encoder_options(pooling: str, answer_mask: str) -> None:
    """Raises ValueError('encoder.<key> <what is wrong>') for an unknown pooling or answer
    mask (the ``encoder`` config section and the encoder itself share this check)."""
    if pooling not in POOLINGS:
        raise ValueError(f"encoder.pooling unknown pooling {pooling!r}; expected one of "
                         f"{list(POOLINGS)}")
    if answer_mask not in ANSWER_MASKS:
        raise ValueError(f"encoder.answer_mask {answer_mask!r}: expected one of "
                         f"{list(ANSWER_MASKS)}")


class Projector(nn.Sequential):
    def __init__(self, hidden: int, inner: int = 512, out: int = 128):
        super().__init__(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, out))


class ContrastiveEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, mask: AttentionMask, *, hidden_size: int,
                 pooling: str = "user_token", projector_dims: tuple[int, int] = (512, 128),
                 answer_mask: str = "same", input_layer: nn.Module | None = None):
        super().__init__()
        check_encoder_options(pooling, answer_mask)
        if pooling == "global_token" and not mask.global_token:
            raise ValueError(f"global_token pooling needs a mask with a global token "
                             f"(global_query), not {mask.name!r}")
        self.backbone = backbone
        self.mask = mask
        self.pooling = pooling
        self.answer_mask = answer_mask
        self.projector = Projector(hidden_size, *projector_dims)
        self.input_layer = input_layer
        # The joint next-token loss's head (set by the module; None: the tied input embedding)
        self.lm_head: nn.Module | None = None
        # FlexAttention backbones get a block mask and score mods instead of a dense bias.
        self.flex = getattr(backbone.config, "_attn_implementation", None) == FLEX
        self._fixed_answer_mask = {"causal": CausalMask(), "bidirectional": BidirectionalMask()}
        self.global_query = None
        if mask.global_token:  # initialised like a token embedding
            std = float(backbone.get_input_embeddings().weight.detach().std())
            self.global_query = nn.Parameter(torch.randn(hidden_size) * std)
        # When set (GG-SM pre-warmup), the user tower also keeps the input of the last layer.
        self.capture_last_layer_input = False
        self.last_layer_input: torch.Tensor | None = None

    def inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               segment_ids: torch.Tensor, mask: AttentionMask, global_token: bool = False,
               slots: dict | None = None, dense: bool = False,
               embeds: torch.Tensor | None = None):
        """What the backbone receives: (model inputs, attention mask, segment ids, bias).

        Model inputs are ``{"input_ids"}``, or ``{"inputs_embeds"}`` when the mask reads
        embeddings, a global token is inserted (then mask and segments grow by one), the
        input is hierarchical (``slots``) or the caller gives the token embeddings
        (``embeds`` (B, L, H), e.g. with prompt vectors written in; ``input_ids`` then only
        shape the batch). The bias is built once per forward: a dense tensor, or for a flex
        backbone (unless ``dense``) a :class:`FlexBias`."""
        dtype = self.backbone.get_input_embeddings().weight.dtype
        model_inputs, extra = {"input_ids": input_ids}, {}
        if embeds is not None or global_token or mask.reads_embeddings or slots is not None:
            if embeds is None:
                embeds = self.input_embeddings(input_ids, slots)
            if global_token:
                embeds, attention_mask, segment_ids = insert_global_token(
                    embeds, attention_mask, segment_ids, self.global_query)
            model_inputs = {"inputs_embeds": embeds}
            extra = {"inputs_embeds": embeds} if mask.reads_embeddings else {}
        if self.flex and not dense:
            batch, length = attention_mask.shape
            bias = flex_bias(mask.flex(segment_ids, attention_mask, dtype, **extra), batch,
                             length, attention_mask.device)
        else:
            bias = mask(segment_ids, attention_mask, dtype, **extra)
        return model_inputs, attention_mask, segment_ids, bias

    def input_embeddings(self, input_ids: torch.Tensor, slots: dict | None = None):
        """(B, L, H) token embeddings, slot positions replaced under hierarchical input."""
        embeds = self.backbone.get_input_embeddings()(input_ids)
        if slots is not None:
            if self.input_layer is None:
                raise ValueError("a hierarchical batch (user_slot_*) needs an encoder built "
                                 "with input.mode: hierarchical")
            embeds = self.input_layer(embeds, slots)
        return embeds

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      segment_ids: torch.Tensor, mask: AttentionMask, capture: bool = False,
                      global_token: bool = False, slots: dict | None = None,
                      dense: bool = False,
                      answer: tuple[torch.Tensor, torch.Tensor] | None = None,
                      embeds: torch.Tensor | None = None):
        """(final-layer hidden states (B, L', H), attention mask, segment ids) under ``mask``;
        L' = L + 1 with ``global_token``. With ``capture``, the last layer's input is kept in
        ``last_layer_input``. ``dense`` makes a flex backbone take the dense bias (sdpa).
        ``answer`` (ids, mask) follows the prefix under :func:`~.ntp.joint_bias`: the hidden
        states then span L' + A (mask and segment ids stay the prefix's). ``embeds``: the
        token embeddings to read instead of embedding ``input_ids`` (see :meth:`inputs`)."""
        model_inputs, attention_mask, segment_ids, bias = self.inputs(
            input_ids, attention_mask, segment_ids, mask, global_token, slots, dense, embeds)
        kwargs = {"output_hidden_states": True} if capture else {}
        if answer is not None:
            if isinstance(bias, FlexBias):
                raise ValueError("the joint next-token loss needs a dense bias: "
                                 "backbone.attention sdpa or eager")
            model_inputs = self._append_answer(model_inputs, answer[0])
            bias = joint_bias(bias, attention_mask, answer[1])
            kwargs["position_ids"] = answer_positions(attention_mask, answer[0].shape[1])
        if isinstance(bias, FlexBias):
            with flex_scores(bias.score_mod):
                out = self.backbone(**model_inputs, attention_mask=bias.block_mask, **kwargs)
        elif mask.per_layer:
            with layer_biases(bias):
                out = self.backbone(**model_inputs, attention_mask=bias[0], **kwargs)
        else:
            out = self.backbone(**model_inputs, attention_mask=bias, **kwargs)
        if capture:
            # the whole sequence, an answer included: a slice would take no gradient
            self.last_layer_input = out.hidden_states[-2]
        return out.last_hidden_state, attention_mask, segment_ids

    def _append_answer(self, model_inputs: dict, answer_ids: torch.Tensor) -> dict:
        if "inputs_embeds" in model_inputs:
            answer = self.backbone.get_input_embeddings()(answer_ids)
            return {"inputs_embeds": torch.cat([model_inputs["inputs_embeds"], answer], 1)}
        return {"input_ids": torch.cat([model_inputs["input_ids"], answer_ids], 1)}

    def answer_logits(self, hidden: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
        """(B, A, V) logits of each answer token, from the joint hidden states (B, L + A, H):
        the prefix's last real token (the anchor) predicts the first, answer token k - 1 the
        k-th."""
        width = prefix_mask.shape[1]
        anchor = hidden[torch.arange(hidden.shape[0], device=hidden.device),
                        last_index(prefix_mask)]
        states = torch.cat([anchor[:, None], hidden[:, width:-1]], 1)
        if self.lm_head is not None:
            return self.lm_head(states)
        return F.linear(states, self.backbone.get_input_embeddings().weight)

    @torch.no_grad()
    def future_attention(self, input_ids, attention_mask, segment_ids,
                         slots: dict | None = None) -> torch.Tensor:
        """(layers,) per layer of the user tower: the attention mass a real query token puts
        on later keys, averaged over heads and real query tokens (0 under a causal mask)."""
        with record_future_attention() as masses:  # the recording needs a dense bias
            _, attention_mask, _ = self.hidden_states(
                input_ids, attention_mask, segment_ids, self.mask,
                global_token=self.global_query is not None, slots=slots, dense=True)
        real = attention_mask.bool()
        return torch.stack([masses[k].mean(1)[real].mean() for k in sorted(masses)])

    def embed(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str,
              segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(pool(hidden, attention_mask, pooling, segment_ids))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The embedding of a pooled hidden state: projector, then L2 normalisation."""
        return F.normalize(self.projector(pooled).float(), dim=-1)

    def pooled_users(self, input_ids, attention_mask, segment_ids,
                     mask: AttentionMask | None = None,
                     slots: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled hidden states (B, H) before the projector, final hidden states (B, L, H);
        L + 1 with a global token) of the user tower."""
        hidden, attention_mask, segment_ids = self.hidden_states(
            input_ids, attention_mask, segment_ids, mask or self.mask,
            capture=self.capture_last_layer_input and mask is None,
            global_token=self.global_query is not None, slots=slots)
        return pool(hidden, attention_mask, self.pooling, segment_ids), hidden

    def encode_users(self, input_ids, attention_mask, segment_ids,
                     mask: AttentionMask | None = None,
                     slots: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, D), final hidden states (B, L, H); L + 1 with a global token) of
        the user tower."""
        pooled, hidden = self.pooled_users(input_ids, attention_mask, segment_ids, mask, slots)
        return self.project(pooled), hidden

    def encode_users_and_answer(self, input_ids, attention_mask, segment_ids,
                                answer_ids: torch.Tensor, answer_mask: torch.Tensor,
                                slots: dict | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The user tower with the answer after the anchor, one forward (training mask):
        (embeddings (B, D), final hidden states of prefix and answer (B, L' + A, H), answer
        logits (B, A, V), see :meth:`answer_logits`). ``answer_ids``/``answer_mask`` are
        right-padded. The embeddings and the first L' states are those of
        :meth:`encode_users`."""
        hidden, attention_mask, segment_ids = self.hidden_states(
            input_ids, attention_mask, segment_ids, self.mask,
            capture=self.capture_last_layer_input,
            global_token=self.global_query is not None, slots=slots,
            answer=(answer_ids, answer_mask))
        users = self.embed(hidden[:, :attention_mask.shape[1]], attention_mask, self.pooling,
                           segment_ids)
        return users, hidden, self.answer_logits(hidden, attention_mask)

    def answer_segments(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Answer content as history, its last real token (``<eos>``) as anchor."""
        seg = attention_mask.long() * HISTORY
        batch = torch.arange(seg.shape[0], device=seg.device)
        seg[batch, last_index(attention_mask)] = ANCHOR
        return seg

    def encode_answers(self, input_ids, attention_mask,
                       embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) answer-tower embeddings; ``embeds``: token embeddings to read instead of
        embedding ``input_ids`` (prompt vectors written in)."""
        segment_ids = self.answer_segments(attention_mask)
        mask = self.mask if self.answer_mask == "same" else self._fixed_answer_mask[self.answer_mask]
        hidden, _, _ = self.hidden_states(input_ids, attention_mask, segment_ids, mask,
                                          embeds=embeds)
        pooling = "last" if self.pooling in SINGLE_TOKEN_POOLINGS else self.pooling
        return self.embed(hidden, attention_mask, pooling)
