#!/usr/bin/env bash
# The 14 zoo models (#15) on real TikTok (image + audio), default configuration (first grid
# value of every key), patience 50, long-tail split, one torch thread per run, two queues on
# the 2-core development machine. These are the commands this session ran; results/zoo_tiktok.md
# says which seeds finished. A rerun reuses every finished run (resume).
set -u
OUT=saved/qual/zoo
COMMON="-d tiktok --data_path ../shared/data/ --longtail --threads 1 --stopping_step 50 --checkpoint_dir $OUT"
python -m mmrec_egra.compare $COMMON -m ItemKNNCBF LayerGCN SELFCFED_LGN SLMRec PGL DRAGON GUME --seeds 999 --out $OUT/qA &
python -m mmrec_egra.compare $COMMON -m MMGCN DualGNN GRCN MVGAE SMORE DAMRS MENTOR --seeds 999 --out $OUT/qB &
wait
# ItemKNNCBF has nothing to train (every seed gives the same numbers); its 16-point grid,
# with the features as they are and with each modality L2-normalised first:
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --threads 1 --checkpoint_dir saved/qual/zoo_knn \
    -m ItemKNNCBF --seeds 999 --grid --out saved/qual/zoo_knn/raw
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --threads 1 --checkpoint_dir saved/qual/zoo_knn/l2 \
    -m ItemKNNCBF --seeds 999 --grid --feature_norm l2 --out saved/qual/zoo_knn/l2
