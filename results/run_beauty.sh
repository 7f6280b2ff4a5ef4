#!/usr/bin/env bash
# Beauty (Amazon Beauty, 384-d MiniLM title features, data/beauty built by `mmrec-egra prepare`),
# seed 999, patience 50, one torch thread per run, 2-4 runs at once on the 2-core machine. These
# are the commands this session ran (results/beauty.md says which finished and which were cut).
set -u
OUT=saved/qual/beauty
COMMON="-d beauty --longtail --threads 1 --stopping_step 50"
# SIGE (default configuration)
nice -n 5 python -m mmrec_egra.compare $COMMON --checkpoint_dir $OUT -m SIGE --seeds 999 --out $OUT/t_sige999 &
# EGRA with its MGCN teacher: stage 1 trains MGCN seed 999 (the MGCN row, read back with
# `python results/teacher_rows.py data/beauty/.artifacts`), then the default (dynamic) arm
# (run as `--arms static_alignment full`, which runs `full` first; stopped after it, since the
# static arm had been started in its own process below to save time)
nice -n 5 python -m mmrec_egra.compare $COMMON --checkpoint_dir $OUT --ablation EGRA --arms full --seeds 999 --out $OUT/t_egra999 &
wait
# the static-alignment arm (reuses the stored MGCN teacher)
nice -n 5 python -m mmrec_egra.compare $COMMON --checkpoint_dir $OUT --ablation EGRA --arms static_alignment --seeds 999 --out $OUT/t_static999 &
# EGRA with SIGE (the best-valid model) as teacher: the finished SIGE run above is the teacher
# (stage 1 would retrain the same model; on office the export is bit-identical to stage 1's)
mmrec-egra export-items "$(ls -d $OUT/SIGE-beauty/seed=999_*)" --out saved/qual/beauty_tsige/sige999_items.npy
nice -n 5 python -m mmrec_egra.compare $COMMON --checkpoint_dir saved/qual/beauty_tsige \
    --teacher_embeddings_file saved/qual/beauty_tsige/sige999_items.npy --ablation EGRA --arms static_alignment --seeds 999 --out saved/qual/beauty_tsige/t_999 &
wait
