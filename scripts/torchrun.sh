#!/usr/bin/env bash
# DDP with torchrun: one process per GPU on this node; run the same command on every node.
#
#   scripts/torchrun.sh TASK_CONFIG [more train.py arguments]
#
#   # one node, all its GPUs
#   scripts/torchrun.sh configs/lra/listops.yaml --config configs/attention/yoso_c_16.yaml
#   # two nodes (on node 0 and node 1, NODE_RANK=0 / 1, same MASTER_ADDR)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.cluster scripts/torchrun.sh configs/lra/listops.yaml
#
# Environment: NNODES (1), NODE_RANK (0), GPUS_PER_NODE (all visible GPUs), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500). The trainer preset (ddp.yaml, or ddp_multinode.yaml when NNODES > 1) goes
# right after the task config, so later arguments still override it. Resume a run with
# "--ckpt_path last". Logs, checkpoints and the data cache must be on a filesystem all nodes share
# (or pass --trainer.default_root_dir and --data.init_args.cache_dir on one).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
task_config=$1
shift
nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
gpus=${GPUS_PER_NODE:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}
if [[ "$gpus" -lt 1 ]]; then
  echo "no GPU visible (set GPUS_PER_NODE, or use configs/trainer/cpu.yaml without torchrun)" >&2
  exit 2
fi
preset=configs/trainer/ddp.yaml
if [[ "$nnodes" -gt 1 ]]; then
  preset=configs/trainer/ddp_multinode.yaml
fi
cd "$(dirname "$0")/.."
exec torchrun --nnodes "$nnodes" --node_rank "$node_rank" --nproc_per_node "$gpus" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  train.py --config "$task_config" --config "$preset" \
  --trainer.num_nodes "$nnodes" --trainer.devices "$gpus" "$@"
