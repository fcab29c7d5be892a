#!/usr/bin/env bash
# Reproduce the emulator's default jet energy corrections (hltemu/models/hltemu_V2_MC_*) and
# their validation: the samples and seeds are registered in benchmarks/SAMPLES.md.
#
#   examples/derive_default_jec.sh WORKDIR [JOBS]
#
# Disk: about 16 GB of generated events in WORKDIR.  Time on 2 cores: see benchmarks/SAMPLES.md.
set -euo pipefail
work=${1:?usage: derive_default_jec.sh WORKDIR [JOBS]}
jobs=${2:-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"
cd "$work"

gen() {  # QCD, pT-hat > 15 GeV drawn with an extra (pT-hat / 15)^4: about flat in log pT-hat
  hltemu generate --process qcd --pthat-min 15 --pthat-bias 4 --jobs "$jobs" --no-progress "$@"
}
# derivation (seed 1001: pileup 0 and 50 paired; seed 1002: pileup 0 and 20 paired)
gen --events 3000 --pileup 0 --seed 1001 -o d1001_pu0.root
gen --events 3000 --pileup 50 --seed 1001 -o d1001_pu50.root
gen --events 3000 --pileup 0 --seed 1002 -o d1002_pu0.root
gen --events 3000 --pileup 20 --seed 1002 -o d1002_pu20.root
for s in 1003 1004 1005 1006; do  # pileup 0 only: statistics for L2Relative
  gen --events 6000 --pileup 0 --seed "$s" -o "d${s}_pu0.root"
done
# held out (seed 2002): pileup 0 and 50, and 30, a pileup the derivation never saw (seed 2001,
# 3,000 events each, chose the L1's pT binning: see benchmarks/SAMPLES.md)
gen --events 6000 --pileup 0 --seed 2002 -o v2002_pu0.root
gen --events 6000 --pileup 50 --seed 2002 -o v2002_pu50.root
gen --events 6000 --pileup 30 --seed 2002 -o v2002_pu30.root
gen --events 1500 --pileup 0 --seed 2003 -o v2003_pu0.root
gen --events 1500 --pileup 50 --seed 2003 -o v2003_pu50.root
gen --events 1500 --pileup 30 --seed 2003 -o v2003_pu30.root

# the jets, truth jets and rho (no JEC: that is what is being derived)
for f in d1001_pu0 d1001_pu50 d1002_pu0 d1002_pu20 d1003_pu0 d1004_pu0 d1005_pu0 d1006_pu0 \
         v2002_pu0 v2002_pu50 v2002_pu30 \
         v2003_pu0 v2003_pu50 v2003_pu30; do
  hltemu run "$f.root" --stages topocluster,antikt,genjets,rho --backend cpu \
    -o "run_$f.root" -r "run_$f.json" --no-progress
done

hltemu derive-jec run_d1001_pu0.root run_d1001_pu50.root run_d1002_pu0.root run_d1002_pu20.root \
  run_d1003_pu0.root run_d1004_pu0.root run_d1005_pu0.root run_d1006_pu0.root \
  --validate run_v2002_pu0.root --validate run_v2002_pu50.root --validate run_v2002_pu30.root \
  --validate run_v2003_pu0.root --validate run_v2003_pu50.root --validate run_v2003_pu30.root \
  -o jec --no-progress

# the trigger on the held-out pairs with the derived corrections
cat > jec.toml <<EOF
[jec]
levels = ["jec/hltemu_V2_MC_L1FastJet_AK4Calo.txt", "jec/hltemu_V2_MC_L2Relative_AK4Calo.txt"]
EOF
for f in v2002_pu0 v2002_pu50; do
  hltemu run "run_$f.root" --stages jec,trigger --config jec.toml --backend cpu \
    -o "trig_$f.root" -r "trig_$f.json" --no-progress
done
python "$here/trigger_pileup_stability.py" trig_v2002_pu0.root trig_v2002_pu50.root \
  --json trigger_pu0_pu50.json
