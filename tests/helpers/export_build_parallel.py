"""``torchrun -m tests.helpers.export_build_parallel DST TP PP MODEL_JSON`` (the repository root on
``PYTHONPATH``; ``tests.helpers.export.build_parallel`` runs it so): build the tiny test model (``MODEL_JSON``:
its ``cfg.model`` overrides) under TP x PP, save it as checkpoint DST the way a TP x PP run does, and write its
logits on ``tests.helpers.export.probe_ids()``, computed under that layout, to DST/ref_logits.pt."""
import json
import os
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_ixt.distributed import init_distributed
from tests.helpers.export import VOCAB, build_model, probe_ids, save_model_checkpoint, tiny_config


def main():
    dst, tp, pp, model_kw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    cfg = tiny_config(**model_kw)
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    init_distributed(tp, pp, backend="gloo")
    model = build_model(cfg, seed=1)
    save_model_checkpoint(dst, model, cfg)

    ids = probe_ids()
    positions = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    with torch.no_grad():
        if not ps.is_pipeline_first_stage():  # [s, b, h] activations from the previous stage
            hidden = torch.empty(ids.shape[1], ids.shape[0], cfg.model.hidden_size)
            dist.recv(hidden, ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        out = model(ids, positions, None)
        if not ps.is_pipeline_last_stage():
            dist.send(out.contiguous(), ps.get_pipeline_model_parallel_next_rank())
        else:  # vocab-parallel logits: gather the TP shards
            shards = [torch.empty_like(out) for _ in range(tp)]
            dist.all_gather(shards, out.contiguous(), group=ps.get_tensor_model_parallel_group())
            if ps.get_tensor_model_parallel_rank() == 0:
                torch.save(torch.cat(shards, dim=-1)[..., :VOCAB + 1], os.path.join(dst, "ref_logits.pt"))
    dist.barrier()


if __name__ == "__main__":  # dist_checkpointing's writer spawns processes that import this module
    main()
