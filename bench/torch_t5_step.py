"""PyTorch peer of bench/train_step.py: the same multi-task ColaRec step on Hugging Face's T5.

Usage: python bench/torch_t5_step.py D_MODEL D_FF HEADS LAYERS BATCH WARMUP MALLOC STEPS
Per step: encoder over X_u [b, 256] and over X_i, X_i-, X_i+ [3b, 34] (token embeddings with the
item/user ID embeddings written into their slots and the task embedding first, as ours), decoder
passes (length 3) for X_u -> GID(i) and X_i, X_i- -> GIDs, per-level codebook heads, the four
losses, backward, AdamW with clipping over every parameter once (the ID tables included). Random
inputs of the same shapes as ours. MALLOC is `default` (glibc's, as PyTorch runs out of the box) or
`ours` (colarec_jax/runtime/allocator.py's settings, applied before torch loads). Prints one JSON line.
"""

import json
import resource
import sys

from common import call_seconds, use_malloc

VOCAB, K, DEPTH, LEN_U, LEN_I = 8000, 32, 3, 256, 34
NUM_ITEMS, NUM_USERS = 12101, 22363


def main(d_model, d_ff, heads, layers, batch, warmup, malloc, steps):
  d_model, d_ff, heads, layers, batch, warmup, steps = map(
      int, (d_model, d_ff, heads, layers, batch, warmup, steps))
  tuned = use_malloc(malloc)
  import torch  # after malloc's settings, so that its threads' first allocations follow them
  from transformers import T5Config
  from transformers.models.t5.modeling_t5 import T5Stack
  torch.manual_seed(0)
  cfg = T5Config(vocab_size=VOCAB, d_model=d_model, d_ff=d_ff, num_heads=heads,
                 d_kv=d_model // heads, num_layers=layers, num_decoder_layers=layers,
                 dropout_rate=0.1, feed_forward_proj="relu")
  shared = torch.nn.Embedding(VOCAB, d_model)
  enc_cfg = T5Config(**{**cfg.to_dict(), "is_decoder": False, "use_cache": False})
  dec_cfg = T5Config(**{**cfg.to_dict(), "is_decoder": True, "use_cache": False})
  encoder, decoder = T5Stack(enc_cfg), T5Stack(dec_cfg)
  encoder.set_input_embeddings(shared)
  decoder.set_input_embeddings(shared)
  # ColaRec's atomic ID tables (12,101 items, 22,363 users, + padding row) and task embeddings,
  # written into their slots of the encoder inputs as ours does (bench/train_step.py's shapes).
  item_embed, user_embed = torch.nn.Embedding(NUM_ITEMS + 1, d_model), torch.nn.Embedding(
      NUM_USERS + 1, d_model)
  task_embed = torch.nn.Embedding(2, d_model)
  code_embed = torch.nn.Parameter(torch.randn(DEPTH, K + 1, d_model))
  codebook = torch.nn.Parameter(torch.randn(DEPTH, K + 1, d_model))
  bias = torch.nn.Parameter(torch.zeros(DEPTH, K + 1))
  tensors = [*encoder.parameters(), *decoder.parameters(), code_embed, codebook, bias,
             *item_embed.parameters(), *user_embed.parameters(), *task_embed.parameters()]
  params = list({id(p): p for p in tensors}.values())  # the shared embedding once
  opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01)

  def gen_loss(enc, mask, codes):
    shifted = torch.cat([torch.zeros_like(codes[:, :1]), codes[:, :-1]], 1)
    x = code_embed[torch.arange(DEPTH)[None], shifted]
    h = decoder(inputs_embeds=x, encoder_hidden_states=enc,
                encoder_attention_mask=mask).last_hidden_state * d_model ** -0.5
    logits = torch.einsum("btd,tkd->btk", h, codebook) + bias[None]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, K + 1), codes.reshape(-1),
                                             reduction="sum") / codes.shape[0]

  def embed_inputs(tokens, items, users, task):
    x = shared(tokens)
    x = torch.where((items > 0)[..., None], item_embed(items), x)
    x = torch.where((users > 0)[..., None], user_embed(users), x)
    return torch.cat([task_embed(task)[:, None], x[:, 1:]], 1)

  def one_step():
    xu = torch.randint(3, VOCAB, (batch, LEN_U))
    xi = torch.randint(3, VOCAB, (3 * batch, LEN_I))
    mu, mi = torch.ones_like(xu), torch.ones_like(xi)
    items_u, items_i, users_i = (torch.zeros_like(xu), torch.zeros_like(xi),
                                 torch.zeros_like(xi))
    items_u[:, 1::31] = torch.randint(1, NUM_ITEMS, (batch, 9))
    items_i[:, 1] = torch.randint(1, NUM_ITEMS, (3 * batch,))
    users_i[:, 32] = torch.randint(1, NUM_USERS, (3 * batch,))
    codes = torch.randint(1, K + 1, (2 * batch, DEPTH))
    enc_u = encoder(inputs_embeds=embed_inputs(xu, items_u, torch.zeros_like(xu),
                                               torch.zeros(batch, dtype=torch.long)),
                    attention_mask=mu).last_hidden_state
    enc_i = encoder(inputs_embeds=embed_inputs(xi, items_i, users_i,
                                               torch.ones(3 * batch, dtype=torch.long)),
                    attention_mask=mi).last_hidden_state
    h_u, (h_i, h_n, h_p) = enc_u[:, -1], enc_i[:, -1].chunk(3)
    rec = gen_loss(enc_u, mu, codes[:batch])
    index = gen_loss(enc_i[:2 * batch], mi[:2 * batch], codes)
    pair = lambda a, p, n: -torch.nn.functional.logsigmoid((a * (p - n)).sum(-1)).mean()
    loss = 0.08 * (rec + index) + pair(h_u, h_i, h_n) + 0.1 * pair(h_i, h_p, h_n)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach())

  for _ in range(warmup):
    one_step()
  times = call_seconds(lambda _: one_step(), steps)
  print(json.dumps({"step_seconds": times,
                    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "malloc_tuned": tuned}))


if __name__ == "__main__":
  main(*sys.argv[1:])
