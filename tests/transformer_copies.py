"""Faithful copies of the block structure of HuggingFace GPT-2 and BERT (transformers 4.57).

The module tree, attribute names and the order of operations in each forward follow
``transformers.models.gpt2.modeling_gpt2`` and ``transformers.models.bert.modeling_bert``
(eager code paths, SDPA attention, no caches or head masks), so discovery sees what it sees on
the real models without installing transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional


class Conv1D(nn.Module):
    """GPT-2's linear layer: ``x @ weight + bias`` through ``torch.addmm``, weight (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = (*x.size()[:-1], self.nf)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class NewGELUActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                           * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.split_size = heads, dim
        self.c_attn = Conv1D(3 * dim, dim)
        self.c_proj = Conv1D(dim, dim)
        self.attn_dropout = nn.Dropout(0.1)
        self.resid_dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        shape = (*hidden_states.shape[:-1], self.heads, -1)
        query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))
        out = functional.scaled_dot_product_attention(query, key, value, is_causal=True)
        out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1).contiguous()
        out = self.c_proj(out)
        out = self.resid_dropout(out)
        return out


class GPT2MLP(nn.Module):
    def __init__(self, inner: int, dim: int) -> None:
        super().__init__()
        self.c_fc = Conv1D(inner, dim)
        self.c_proj = Conv1D(dim, inner)
        self.act = NewGELUActivation()
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.c_fc(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.c_proj(hidden_states)
        out: torch.Tensor = self.dropout(hidden_states)
        return out


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = GPT2MLP(4 * dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        residual = hidden_states
        hidden_states = self.ln_1(hidden_states)
        attn_output = self.attn(hidden_states)
        hidden_states = attn_output + residual
        residual = hidden_states
        hidden_states = self.ln_2(hidden_states)
        feed_forward_hidden_states = self.mlp(hidden_states)
        hidden_states = residual + feed_forward_hidden_states
        return (hidden_states,)


class GPT2Model(nn.Module):
    def __init__(self, vocab: int = 50, positions: int = 16, dim: int = 8, layers: int = 2,
                 heads: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(positions, dim)
        self.drop = nn.Dropout(0.1)
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device).unsqueeze(0)
        hidden_states = self.wte(input_ids) + self.wpe(position_ids)
        hidden_states = self.drop(hidden_states)
        for block in self.h:
            hidden_states = block(hidden_states)[0]
        out: torch.Tensor = self.ln_f(hidden_states)
        return out


class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, dim: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(positions, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        position_ids = torch.arange(input_ids.shape[1]).unsqueeze(0)
        token_type_ids = torch.zeros_like(input_ids)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings += self.position_embeddings(position_ids)
        embeddings = self.LayerNorm(embeddings)
        out: torch.Tensor = self.dropout(embeddings)
        return out


class BertSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*hidden_states.shape[:-1], self.heads, -1)
        q, k, v = (layer(hidden_states).view(shape).transpose(1, 2)
                   for layer in (self.query, self.key, self.value))
        out = functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)


class BertSelfOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        out: torch.Tensor = self.LayerNorm(hidden_states + input_tensor)
        return out


class BertAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(dim, heads)
        self.output = BertSelfOutput(dim)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        self_outputs = self.self(hidden_states, attention_mask)
        out: torch.Tensor = self.output(self_outputs, hidden_states)
        return out


class BertIntermediate(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, inner)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.intermediate_act_fn(self.dense(hidden_states))
        return out


class BertOutput(BertSelfOutput):
    def __init__(self, inner: int, dim: int) -> None:
        super().__init__(dim)
        self.dense = nn.Linear(inner, dim)


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = BertAttention(dim, heads)
        self.intermediate = BertIntermediate(dim, 4 * dim)
        self.output = BertOutput(4 * dim, dim)

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention_mask)
        intermediate_output = self.intermediate(attention_output)
        out: torch.Tensor = self.output(intermediate_output, attention_output)
        return out


class BertEncoder(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(dim, heads) for _ in range(layers))

    def forward(self, hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask)
        return hidden_states


class BertModel(nn.Module):
    def __init__(self, vocab: int = 50, positions: int = 16, dim: int = 8, layers: int = 2,
                 heads: int = 2) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, positions, dim)
        self.encoder = BertEncoder(dim, heads, layers)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = None
        if attention_mask is not None:  # (N, T) of 0/1 -> additive (N, 1, 1, T)
            mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(
                torch.float32).min
        return self.encoder(self.embeddings(input_ids), mask)
