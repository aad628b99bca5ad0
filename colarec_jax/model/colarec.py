"""The ColaRec model: a T5 encoder-decoder whose encoder reads item content with
atomic item/user-ID embeddings in their slots, and whose decoder emits one GID code per step through
a per-level input table and a per-level codebook head.

Encoder inputs are dicts of [b, L] arrays: 'tokens' (content token ids, EOS, padding), 'items'
(item id at each item-ID slot, else 0), 'users' (user id at each user-ID slot, else 0), 'mask'
(True at real positions), and 'task' [b] (0 = recommendation, 1 = indexing) whose embedding is
written at position 0; optionally 'codes' [b, L, l], the GID of the item at each item slot
(`inputs.history_codes`), added to the slot through the output codebook. An item slot holding
`UNKNOWN_ITEM` reads the shared "unknown item" token (row 0 of the item table, which no real item
uses): items the model has no trained ID for (added after training) and, with
`inputs.item_id_dropout`, randomly chosen training slots.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from colarec_jax.model.t5 import Decoder, Encoder, TransformerConfig
from colarec_jax.runtime.errors import ConfigError

TASK_REC, TASK_INDEX = 0, 1
UNKNOWN_ITEM = -1  # an item slot whose item has no (trained) ID embedding
MODEL_NAMES = ("colarec", "lightgcn", "mostpop")  # what config.model.name may train
INITS = ("colarec", "official")
ID_INITS = ("random", "lightgcn")  # where config.model.id_init starts the ID embeddings
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.shard_ids pads the ID tables' rows to a multiple of this: every device count that divides
# it splits them evenly, so a checkpoint restores on any such mesh.
ID_ROW_MULTIPLE = 1024


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """config.model, checked: which model `--mode=train` trains, and ColaRec's encoder-decoder."""

  name: str = "colarec"
  d_model: int = 128
  d_ff: int = 512
  num_heads: int = 4
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  dropout_rate: float = 0.1
  dtype: str = "float32"  # compute dtype; parameters stay float32
  init_from: str = ""  # a local Hugging Face T5 folder to start from
  id_init: str = "random"  # random | lightgcn: where the item/user-ID embeddings start
  pooled_start: bool = False  # the decoder's start input also holds the pooled encoding h(X)
  freeze_ids: bool = False  # keep the ID tables as they started (with id_init='lightgcn')
  tie_last_level: bool = False  # the last level also scores each code's item by its ID embedding
  prefix_embed: bool = False  # each decoder input also holds its prefix's own embedding
  init: str = "official"  # official (the authors') | colarec: code heads' and position tables' init
  shard_ids: bool = False  # ID tables split by rows over the mesh (rows padded to ID_ROW_MULTIPLE)

  @classmethod
  def from_config(cls, model) -> "ModelConfig":
    out = cls(str(model.name), int(model.d_model), int(model.d_ff), int(model.num_heads),
              int(model.num_encoder_layers), int(model.num_decoder_layers),
              float(model.dropout_rate), str(model.dtype), str(model.init_from),
              str(model.id_init), bool(model.pooled_start), bool(model.freeze_ids),
              bool(model.tie_last_level), bool(model.prefix_embed), str(model.init),
              bool(model.shard_ids))
    if out.init not in INITS:
      raise ConfigError("model.init", f"got {out.init!r}, expected one of "
                        f"{', '.join(map(repr, INITS))}")
    if out.name not in MODEL_NAMES:
      raise ConfigError("model.name", f"got {out.name!r}, expected one of {', '.join(MODEL_NAMES)}")
    if out.id_init not in ID_INITS:
      raise ConfigError("model.id_init", f"got {out.id_init!r}, expected one of "
                        f"{', '.join(ID_INITS)}")
    if out.freeze_ids and out.id_init != "lightgcn":
      raise ConfigError("model.freeze_ids", "got True with model.id_init="
                        f"{out.id_init!r}; expected id_init='lightgcn' (freezing random ID "
                        "tables would leave items indistinguishable by ID)")
    if out.dtype not in DTYPES:
      raise ConfigError("model.dtype", f"got {out.dtype!r}, expected 'float32' or 'bfloat16'")
    for key in ("d_model", "d_ff", "num_heads", "num_encoder_layers", "num_decoder_layers"):
      if getattr(out, key) < 1:
        raise ConfigError(f"model.{key}", f"got {getattr(out, key)}, expected >= 1")
    if out.d_model % out.num_heads:
      raise ConfigError("model.num_heads", f"got {out.num_heads}, expected a divisor of "
                        f"model.d_model={out.d_model}")
    if not 0 <= out.dropout_rate < 1:
      raise ConfigError("model.dropout_rate", f"got {out.dropout_rate}, expected [0, 1)")
    return out

  def transformer(self, vocab_size: int) -> TransformerConfig:
    """The encoder-decoder's shape for a vocabulary of `vocab_size` tokens."""
    return TransformerConfig(
        vocab_size=vocab_size, d_model=self.d_model, d_ff=self.d_ff, num_heads=self.num_heads,
        d_kv=self.d_model // self.num_heads, num_encoder_layers=self.num_encoder_layers,
        num_decoder_layers=self.num_decoder_layers, dropout_rate=self.dropout_rate,
        dtype=DTYPES[self.dtype],
        relative_init_std=0.0 if self.init == "official" else 1.0)


@dataclasses.dataclass(frozen=True)
class ColaRecConfig:
  """The model's shape: the transformer plus the id tables and the GID tree."""

  transformer: TransformerConfig
  num_items: int
  num_users: int
  branching: int  # K: codes 1..K, 0 = decoder start
  depth: int  # l: decoder steps
  pooled_start: bool = False  # the decoder's start input also holds h(X) (model.pooled_start)
  tie_last_level: bool = False  # the last level also scores items by ID (model.tie_last_level)
  prefix_embed: bool = False  # decoder inputs also read their prefix's row (model.prefix_embed)
  official_heads: bool = True  # code heads initialised as the authors' nn.Linear (model.init)
  shard_ids: bool = False  # model.shard_ids: ID table rows padded to ID_ROW_MULTIPLE

  def id_rows(self, count: int) -> int:
    """Rows of an ID table of `count` ids (+ row 0): padded when the tables are sharded."""
    rows = count + 1
    return -(-rows // ID_ROW_MULTIPLE) * ID_ROW_MULTIPLE if self.shard_ids else rows

  @property
  def prefix_rows(self) -> int:
    """model.prefix_embed's table: one row per possible GID prefix of length 0..l-1 (every
    sequence of codes in 1..K, not only the trie's, so items added after training need no new
    rows), sum_t K^t."""
    return sum(self.branching ** t for t in range(self.depth))


MAX_PREFIX_ROWS = 1 << 22  # model.prefix_embed: K=32 up to l=5 (1.1M rows), K=256 up to l=3


def prefix_index(codes: jax.Array, length, branching: int) -> jax.Array:
  """The row of the prefix formed by the first `length` codes (1..K) of each GID in
  model.prefix_embed's table: prefixes of length t fill rows sum_{j<t} K^j onwards in
  lexicographic order (length 0, the root, is row 0).

  Args:
    codes: [..., l] int codes; only the first `length` are read.
    length: int or int array broadcasting against codes[..., 0] (traced is fine).
    branching: K.
  """
  length = jnp.asarray(length)
  index = jnp.zeros(codes.shape[:-1], jnp.int32)
  offset = jnp.zeros_like(length, jnp.int32)
  for i in range(codes.shape[-1]):
    inside = i < length
    code = jnp.maximum(codes[..., i].astype(jnp.int32), 1)  # a dead beam's 0: any row
    index = jnp.where(inside, index * branching + code - 1, index)
    offset = jnp.where(inside, offset + branching ** i, offset)
  return offset + index


def row_split_take(table: jax.Array, ids: jax.Array) -> jax.Array:
  """`table[ids]` for a [rows, d] table split by rows over the context mesh's 'data' axis: each
  device takes the ids that fall in its rows (zeros for the others) and a `psum` gives every
  device the whole lookup. Its gradient is a scatter-add into each device's own rows only.

  Args:
    table: [rows, d], placed P('data', None).
    ids: integer ids of any shape (gathered to every device: they are small).

  Returns:
    [*ids.shape, d], replicated.
  """
  def local(shard, ids):
    rows = shard.shape[0]
    local_ids = ids - jax.lax.axis_index("data") * rows
    held = (local_ids >= 0) & (local_ids < rows)
    found = jnp.take(shard, jnp.clip(local_ids, 0, rows - 1), axis=0)
    return jax.lax.psum(jnp.where(held[..., None], found, 0), "data")

  return jax.shard_map(local, in_specs=(jax.P("data", None), jax.P()), out_specs=jax.P())(
      table, ids)


class ColaRec(nn.Module):
  """Encoder-decoder over content + atomic IDs, generating GIDs level by level."""

  config: ColaRecConfig
  decode: bool = False

  def setup(self):
    cfg, transformer = self.config, self.config.transformer
    embed = lambda n, name: nn.Embed(n, transformer.d_model, embedding_init=nn.initializers.normal(1.0),
                                     name=name)
    self.shared = embed(transformer.vocab_size, "shared")
    # Row 0: the unknown-item (no-user) token; rows past num_items + 1: model.shard_ids's padding.
    self.item_embed = embed(cfg.id_rows(cfg.num_items), "item_embed")
    self.user_embed = embed(cfg.id_rows(cfg.num_users), "user_embed")
    self.task_embed = embed(2, "task_embed")
    # Decoder input table per position (position 0 holds the start code 0) and codebook per level.
    shape = (cfg.depth, cfg.branching + 1, transformer.d_model)
    self.code_embed = self.param("code_embed", nn.initializers.normal(1.0), shape)
    # The authors' heads are PyTorch nn.Linear layers: weight and bias U(+-1/sqrt(d)) by default,
    # so their initial code logits are ~14x narrower than N(0, 1) weights give (initial L_rec
    # per position ln(K + 1) rather than above it). model.init='official' (the default) starts
    # from theirs, so a run of ours starts where theirs does; 'colarec' keeps N(0, 1) and 0.
    if cfg.official_heads:
      bound = transformer.d_model ** -0.5
      uniform = lambda key, s, dtype=jnp.float32: jax.random.uniform(key, s, dtype, -bound, bound)
      head_init, bias_init = uniform, uniform
    else:
      head_init, bias_init = nn.initializers.normal(1.0), nn.initializers.zeros
    self.codebook = self.param("codebook", head_init, shape)
    self.codebook_bias = self.param("codebook_bias", bias_init, shape[:2])
    if cfg.prefix_embed:  # starts at zero: the plain model, each prefix's row then learned
      self.prefix_table = self.param("prefix_embed", nn.initializers.zeros,
                                     (cfg.prefix_rows, transformer.d_model))
    self.encoder = Encoder(transformer, name="encoder")
    self.decoder = Decoder(transformer, decode=self.decode, max_length=cfg.depth, name="decoder")

  def id_rows(self, table: nn.Embed, ids: jax.Array) -> jax.Array:
    """Rows of an ID table. With model.shard_ids, traced under a mesh (`jax.set_mesh`) whose
    'data' axis splits the table by rows: each device looks up the ids among the rows it holds
    and a sum over the axis joins them (`row_split_take`), so the table is never gathered whole
    (partitioning a plain gather, XLA all-gathers the table on every device)."""
    mesh = jax.sharding.get_abstract_mesh()
    if not self.config.shard_ids or mesh.empty or mesh.shape.get("data", 1) == 1:
      return table(ids)
    return row_split_take(table.embedding, ids)

  def embed_inputs(self, inputs: dict) -> jax.Array:
    """[b, L, d]: content tokens, with item/user ID embeddings in their slots, task at 0."""
    x = self.shared(inputs["tokens"])
    items = inputs["items"]
    # Slots (items != 0) read their item's row; UNKNOWN_ITEM reads row 0, the unknown-item token.
    x = jnp.where((items != 0)[..., None], self.id_rows(self.item_embed, jnp.maximum(items, 0)),
                  x)
    x = jnp.where((inputs["users"] > 0)[..., None],
                  self.id_rows(self.user_embed, inputs["users"]), x)
    if "codes" in inputs:  # inputs.history_codes: add each history item's GID codes, read
      # through the decoder's output codebook, so "what the user's items are" and "what to
      # generate" share one space
      codes = inputs["codes"]  # [b, L, l]
      coded = self.codebook[jnp.arange(self.config.depth), codes].sum(axis=-2)
      x = x + jnp.where((codes > 0).any(-1)[..., None], coded, 0.0).astype(x.dtype)
    return x.at[:, 0].set(self.task_embed(inputs["task"]))

  def encode(self, inputs: dict, *, deterministic: bool = True) -> jax.Array:
    """[b, L, d] encoder output."""
    return self.encoder(self.embed_inputs(inputs), inputs["mask"], deterministic=deterministic)

  @staticmethod
  def pool(encoded: jax.Array, mask: jax.Array) -> jax.Array:
    """h(X): the encoder output at the last real position (the EOS), [b, d]."""
    last = jnp.sum(mask, axis=1).astype(jnp.int32) - 1
    return jnp.take_along_axis(encoded, last[:, None, None], axis=1)[:, 0]

  def decoder_inputs(self, codes: jax.Array) -> jax.Array:
    """Teacher forcing: [b, l] target codes -> [b, l, d] inputs (start, z_1, ..., z_{l-1})."""
    shifted = jnp.concatenate([jnp.zeros_like(codes[:, :1]), codes[:, :-1]], axis=1)
    x = self.code_embed[jnp.arange(self.config.depth)[None, :], shifted]
    if self.config.prefix_embed:  # position t reads the prefix of the first t codes
      x = x + self.prefix_table[prefix_index(codes[:, None, :], jnp.arange(self.config.depth),
                                             self.config.branching)]
    return x

  def code_logits(self, hidden: jax.Array, levels: jax.Array) -> jax.Array:
    """[b, T, d] decoder states at levels [T] -> [b, T, K + 1] logits (d scaled by d^-1/2)."""
    scaled = hidden.astype(jnp.float32) * self.config.transformer.d_model ** -0.5
    return (jnp.einsum("btd,tkd->btk", scaled, self.codebook[levels])
            + self.codebook_bias[levels][None])

  def item_logits(self, hidden: jax.Array, items: jax.Array) -> jax.Array:
    """model.tie_last_level's term: [n, d] decoder states and [n, K + 1] the item each code leads
    to -> [n, K + 1] h . e_item (d scaled by d^-1/2), 0 where a code leads to no trained item
    (0: none, or an item added after training, which has no ID row)."""
    scaled = hidden.astype(jnp.float32) * self.config.transformer.d_model ** -0.5
    known = (items > 0) & (items <= self.config.num_items)
    rows = self.id_rows(self.item_embed, jnp.where(known, items, 0)).astype(jnp.float32)
    return jnp.where(known, jnp.einsum("nd,nkd->nk", scaled, rows), 0.0)

  def decode_codes(self, encoded, mask, codes, last_items=None, *,
                   deterministic: bool = True) -> jax.Array:
    """Teacher-forced decoding: [b, l] target codes -> [b, l, K + 1] logits. With
    model.tie_last_level, `last_items` [b, K + 1] (`GidTable.last_level_items` of the targets)
    adds each last code's item term."""
    x = self.decoder_inputs(codes)
    if self.config.pooled_start:
      x = x.at[:, 0].add(self.pool(encoded, mask).astype(x.dtype))
    hidden = self.decoder(x, encoded, mask, deterministic=deterministic)
    logits = self.code_logits(hidden, jnp.arange(self.config.depth))
    if self.config.tie_last_level:
      logits = logits.at[:, -1].add(self.item_logits(hidden[:, -1], last_items))
    return logits

  def __call__(self, inputs: dict, codes: jax.Array, last_items=None, *,
               deterministic: bool = True):
    """(logits [b, l, K + 1], pooled h(X) [b, d]) for encoder inputs and target GIDs."""
    encoded = self.encode(inputs, deterministic=deterministic)
    if self.config.tie_last_level and last_items is None:  # init: any items give the shapes
      last_items = jnp.zeros((codes.shape[0], self.config.branching + 1), jnp.int32)
    logits = self.decode_codes(encoded, inputs["mask"], codes, last_items,
                               deterministic=deterministic)
    return logits, self.pool(encoded, inputs["mask"])

  def init_cache(self, encoded, mask):
    """Creates the decoding cache (apply with mutable=['cache']); cross keys/values computed."""
    shape = (encoded.shape[0], self.config.depth, self.config.transformer.d_model)
    return self.decoder(jnp.zeros(shape, encoded.dtype), encoded, mask, deterministic=True)

  def decode_step(self, encoded, mask, previous_code, position, next_items=None, codes=None):
    """One cached decoder step: [b] previous code at `position` -> [b, K + 1] logits. With
    model.tie_last_level, `next_items` [b, K + 1] is the item each code leads to (all 0 before
    the last level, so only the last level gets the item term); with model.prefix_embed,
    `codes` [b, l] are each row's GID so far (its first `position` codes are read)."""
    level = jnp.asarray(position)
    x = self.code_embed[level, previous_code][:, None]
    if self.config.prefix_embed:
      x = x + self.prefix_table[prefix_index(codes, level, self.config.branching)][:, None]
    if self.config.pooled_start:  # rows are [b, beams] flattened: each user's pool per beam
      pooled = self.pool(encoded, mask).astype(x.dtype)
      start = jnp.repeat(pooled, x.shape[0] // pooled.shape[0], axis=0)[:, None]
      x = x + jnp.where(level == 0, start, jnp.zeros_like(start))
    hidden = self.decoder(x, encoded, mask, deterministic=True, position=level)
    logits = self.code_logits(hidden, level[None])[:, 0]
    if self.config.tie_last_level:
      logits = logits + self.item_logits(hidden[:, 0], next_items)
    return logits


def create_model(cfg: ModelConfig, *, vocab_size: int, num_items: int, num_users: int,
                 branching: int, depth: int) -> ColaRec:
  """The ColaRec module for a model config, a vocabulary, the id tables and a GID tree of
  `branching` codes per level and `depth` levels (take them from the GID table).

  Raises:
    ConfigError: model.prefix_embed on a tree with more than MAX_PREFIX_ROWS possible prefixes.
  """
  config = ColaRecConfig(cfg.transformer(vocab_size), num_items=num_items, num_users=num_users,
                         branching=branching, depth=depth, pooled_start=cfg.pooled_start,
                         tie_last_level=cfg.tie_last_level, prefix_embed=cfg.prefix_embed,
                         official_heads=cfg.init == "official", shard_ids=cfg.shard_ids)
  if cfg.prefix_embed and config.prefix_rows > MAX_PREFIX_ROWS:
    raise ConfigError("model.prefix_embed", f"got True with K={branching}, l={depth}: "
                      f"{config.prefix_rows:,} prefix rows; expected at most "
                      f"{MAX_PREFIX_ROWS:,} (a smaller gid.branching or gid.depth)")
  return ColaRec(config)
