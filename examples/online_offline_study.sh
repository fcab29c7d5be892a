#!/usr/bin/env bash
# HLT jets against offline jets on the emulator's own events: generate QCD dijets at pileup 50,
# run the HLT chain and the offline reconstruction on them, then `hltemu study online-offline`.
#
#   examples/online_offline_study.sh WORKDIR [EVENTS] [JOBS] [SEED]
#
# EVENTS defaults to 2,000 (about 8 minutes of generation on 2 cores), SEED to 2004: take a
# seed that no correction was derived on (benchmarks/SAMPLES.md) and register it there.
# WORKDIR/study/ gets summary.json and the figures.
set -euo pipefail
work=${1:?usage: online_offline_study.sh WORKDIR [EVENTS] [JOBS] [SEED]}
events=${2:-2000}
jobs=${3:-2}
seed=${4:-2004}
mkdir -p "$work"
cd "$work"

hltemu generate --process qcd --pthat-min 15 --pthat-bias 4 --pileup 50 --events "$events" \
  --seed "$seed" --jobs "$jobs" --no-progress -o "qcd_pu50_s$seed.root"
hltemu run "qcd_pu50_s$seed.root" --backend cpu --no-progress \
  --stages topocluster,antikt,rho,jec,trigger,tracks,vertices,pfcandidates,pfjets,pfrho,genjets \
  --drop 'pfcandidate*' --drop 'track*' --drop cell_cluster \
  -o "run_qcd_pu50_s$seed.root" -r "run_qcd_pu50_s$seed.json"
hltemu study online-offline "run_qcd_pu50_s$seed.root" -o study --bootstrap 200 --no-progress
