#!/usr/bin/env bash
# The 14 zoo models (#15) on real TikTok (image + audio), default configuration (first grid
# value of every key), patience 50, long-tail split, one torch thread per run, on the 2-core
# development machine. These are the commands this session ran, in order (2-4 at a time);
# results/zoo_tiktok.md says which seeds finished. A rerun reuses every finished run (resume).
set -u
OUT=saved/qual/zoo
COMMON="-d tiktok --data_path ../shared/data/ --longtail --threads 1 --stopping_step 50 --checkpoint_dir $OUT"
python -m mmrec_egra.compare $COMMON -m ItemKNNCBF LayerGCN SELFCFED_LGN SLMRec PGL DRAGON GUME --seeds 999 --out $OUT/qA &
# (queue B was stopped before MENTOR, which ran in its own folder, saved/qual/zoo_m, so that it could start earlier)
python -m mmrec_egra.compare $COMMON -m MMGCN DualGNN GRCN MVGAE SMORE DAMRS --seeds 999 --out $OUT/qB &
python -m mmrec_egra.compare ${COMMON/$OUT/saved/qual/zoo_m} -m MENTOR --seeds 999 --out saved/qual/zoo_m/t &
# the reference line under the same protocol, then more seeds of the cheap models and of SMORE
python -m mmrec_egra.compare $COMMON -m LightGCN --seeds 999 1 2 --out $OUT/lightgcn
python -m mmrec_egra.compare $COMMON -m ItemKNNCBF PGL SELFCFED_LGN --seeds 999 1 2 --out $OUT/qC
python -m mmrec_egra.compare $COMMON -m SMORE --seeds 999 1 2 --out $OUT/smore
python -m mmrec_egra.compare $COMMON -m LayerGCN MVGAE --seeds 999 1 2 --out $OUT/qD    # last; cut at the session's end
wait

# Investigations of the models below LightGCN (seed 999, one change each; main.py runs every
# combination of a grid, so the other grid keys are pinned to their defaults):
INV="-d tiktok --data_path ../shared/data/ --threads 1 --stopping_step 50 --checkpoint_dir saved/qual/zoo_inv --seed 999"
python main.py -m DRAGON $INV --reg_weight 0.0001 --freeze_features false
python main.py -m DRAGON $INV --reg_weight 0.0001 --n_mm_layers 0
python main.py -m MMGCN $INV --learning_rate 0.001 --reg_weight 0.01
# ItemKNNCBF has nothing to train (every seed gives the same numbers); its 16-point grid with the
# features as they are and with each modality L2-normalised first; and how much co-consumption
# signal TikTok's raw features carry:
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --threads 1 --checkpoint_dir saved/qual/zoo_knn \
    -m ItemKNNCBF --seeds 999 --grid --out saved/qual/zoo_knn/raw
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --threads 1 --checkpoint_dir saved/qual/zoo_knn/l2 \
    -m ItemKNNCBF --seeds 999 --grid --feature_norm l2 --out saved/qual/zoo_knn/l2
python results/item_graphs.py tiktok --data_path ../shared/data/

# The table: every finished run folder of each model
args=""
for m in LightGCN SMORE SELFCFED_LGN PGL LayerGCN GRCN DAMRS MENTOR MVGAE GUME SLMRec DRAGON DualGNN MMGCN ItemKNNCBF; do
    d=$(for x in $OUT/$m-tiktok/seed=*/ saved/qual/zoo_m/$m-tiktok/seed=*/; do [ -f "$x/result.json" ] && echo "${x%/}"; done | paste -sd, -)
    [ -n "$d" ] && args="$args $m=$d"
done
python results/seed_table.py results/zoo_tiktok.csv $args
