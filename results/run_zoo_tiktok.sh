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
# next session: seeds 1 and 2 of the one-seed models, two queues (cheapest first, so that as many
# models as possible get three seeds; the queue was cut where results/zoo_tiktok.md says)
python -m mmrec_egra.compare $COMMON -m DRAGON DualGNN MMGCN SLMRec GUME --seeds 1 2 --out $OUT/qE &
( python -m mmrec_egra.compare $COMMON -m MVGAE DAMRS --seeds 1 2 --out $OUT/qF &&
  python -m mmrec_egra.compare ${COMMON/$OUT/saved/qual/zoo_m} -m MENTOR --seeds 1 2 --out saved/qual/zoo_m/t2 &&
  python -m mmrec_egra.compare $COMMON -m GRCN --seeds 1 2 --out $OUT/qG ) &
wait
# (queue F was stopped during MENTOR seed 1, which was then resumed alone from its last.pt; MENTOR
# seed 2 and GRCN were not run)
python -m mmrec_egra.compare ${COMMON/$OUT/saved/qual/zoo_m} -m MENTOR --seeds 1 --out saved/qual/zoo_m/t2
# the popularity reference line (no training, seeds identical)
python -m mmrec_egra.compare $COMMON -m Pop --seeds 999 --out $OUT/pop

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
# how much of each trained model's top-20 is popularity (best-valid weights of seed 999)
run() { ls -d $OUT/$1-tiktok/seed=999_*/ | head -1; }
python results/popularity_share.py --data_path ../shared/data/ LightGCN=$(run LightGCN) SMORE=$(run SMORE) \
    DRAGON=$(run DRAGON) DualGNN=$(run DualGNN) MMGCN=$(run MMGCN)
# TikTok's image features hold 85% of their energy in the mean vector (random pairs: cosine 0.86):
# the same data with every feature dimension z-scored (data/tiktok_z), for the three models that
# feed the raw features through their own layers
mkdir -p data/tiktok_z && cp ../shared/data/tiktok/tiktok.inter data/tiktok_z/tiktok_z.inter
python -c "
import numpy as np
for m in ['image', 'audio']:
    x = np.load('../shared/data/tiktok/%s_feat.npy' % m).astype(np.float32)
    np.save('data/tiktok_z/%s_feat.npy' % m, ((x - x.mean(0)) / x.std(0).clip(1e-6)).astype(np.float32))"
printf 'inter_file_name: tiktok_z.inter\nmodalities:\n  image: image_feat.npy\n  audio: audio_feat.npy\n' > data/tiktok_z/tiktok_z.yaml
python -m mmrec_egra.compare -d tiktok_z --longtail --threads 1 --stopping_step 50 --checkpoint_dir saved/qual/zoo_z \
    -m DRAGON DualGNN MMGCN --seeds 999 --out saved/qual/zoo_z/t     # DRAGON stopped after 10 epochs (see the md)
# single changes (other grid keys pinned)
python main.py -m DRAGON $INV --reg_weight 0.0001 --learning_rate 0.0001
python main.py -m MMGCN $INV --learning_rate 0.001 --reg_weight 1e-05 --weight_decay 0.0001
python main.py -m MMGCN $INV --learning_rate 0.0001 --reg_weight 1e-05
python main.py -m DualGNN $INV --user_knn_k 10 --reg_weight 0.0001 --learning_rate 0.0001   # stopped after 77 epochs
python main.py -m MVGAE $INV --learning_rate 0.0005 --kl_weight 0.001
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --longtail --threads 1 --stopping_step 50 \
    --checkpoint_dir saved/qual/zoo_inv -m MMGCN --learning_rate 0.0001 --reg_weight 1e-05 --seeds 999 1 2 --out saved/qual/zoo_inv/mmgcn_lr1e-4
# positive control on office (informative text features); office's LightGCN row is from run_office.sh
OFF="-d office --longtail --threads 1 --stopping_step 50 --checkpoint_dir saved/qual/zoo_inv_office"
python -m mmrec_egra.compare $OFF -m DRAGON Pop --seeds 999 --out saved/qual/zoo_inv_office/t
python -m mmrec_egra.compare $OFF -m DualGNN --seeds 999 --out saved/qual/zoo_inv_office/t2
# the investigations table (one folder per row; seed-999 MMGCN lr 1e-4: the --longtail run, whose result has tail metrics)
I=saved/qual/zoo_inv; O=saved/qual/zoo_inv_office; Z=saved/qual/zoo_z
one() { for x in $1/seed=${2}_*/; do [ -f "$x/result.json" ] && grep -q "$3" "$x/config.json" && echo "${x%/}"; done | head -1; }
python results/seed_table.py results/zoo_tiktok_investigations.csv \
  "tiktok Pop=$(ls -d $OUT/Pop-tiktok/seed=999*)" \
  "tiktok MMGCN lr 1e-4=$(ls -d $I/MMGCN-tiktok/seed=*_learning_rate=0.0001_* | while read x; do grep -q 'tail/recall@20' $x/result.json && echo $x; done | paste -sd, -)" \
  "tiktok MMGCN reg 1e-2=$(ls -d $I/MMGCN-tiktok/seed=999_learning_rate=0.001_reg_weight=0.01-*)" \
  "tiktok MMGCN weight_decay 1e-4=$(ls -d $I/MMGCN-tiktok/seed=999_learning_rate=0.001_reg_weight=1e-05-*)" \
  "tiktok_z MMGCN=$(ls -d $Z/MMGCN-tiktok_z/seed=999_*)" \
  "tiktok DRAGON trainable features=$(one $I/DRAGON-tiktok 999 '"freeze_features": false')" \
  "tiktok DRAGON n_mm_layers 0=$(one $I/DRAGON-tiktok 999 '"n_mm_layers": 0')" \
  "tiktok DRAGON lr 1e-4=$(one $I/DRAGON-tiktok 999 '"learning_rate": 0.0001')" \
  "tiktok_z DualGNN=$(ls -d $Z/DualGNN-tiktok_z/seed=999_*)" \
  "tiktok MVGAE lr 5e-4=$(ls -d $I/MVGAE-tiktok/seed=999_learning_rate=0.0005_*)" \
  "office Pop=$(ls -d $O/Pop-office/seed=999*)" \
  "office LightGCN=$(ls -d saved/qual/office/LightGCN-office/seed=999_*)" \
  "office DRAGON=$(ls -d $O/DRAGON-office/seed=999_*)" \
  "office DualGNN=$(ls -d $O/DualGNN-office/seed=999_*)"

# session 3 (2026-12-01, evening): GRCN seeds 1 and 2 (one process each), MGCN under the same
# protocol (patience 50, CPU: the README's MGCN rows are GPU runs with patience 20), MENTOR seed 2,
# and the first models of the equal-budget grid (--grid-max 2: the default and the last
# combination of each grid, chosen on valid per seed; the default runs above are reused)
python -m mmrec_egra.compare $COMMON -m GRCN --seeds 1 --out $OUT/qG1 &
python -m mmrec_egra.compare $COMMON -m GRCN --seeds 2 --out $OUT/qG2 &
python -m mmrec_egra.compare $COMMON -m ItemKNNCBF Pop LightGCN PGL SELFCFED_LGN DualGNN DRAGON --seeds 999 1 2 \
    --grid-max 2 --out $OUT/eqA &     # stopped (SIGINT) at DRAGON seed 999, epoch ~1 of its last combination
python -m mmrec_egra.compare $COMMON -m DualGNN --seeds 2 --grid-max 2 --out $OUT/eqD2 &   # beside queue eqA, to finish DualGNN
( python -m mmrec_egra.compare $COMMON -m MGCN --seeds 999 1 2 --out $OUT/mgcn &&
  python -m mmrec_egra.compare ${COMMON/$OUT/saved/qual/zoo_m} -m MENTOR --seeds 2 --out saved/qual/zoo_m/t3 ) &
wait
# what the whole equal-budget grid still needs, and its estimated cost (trains nothing)
python -m mmrec_egra.compare $COMMON -m LightGCN SMORE SELFCFED_LGN PGL LayerGCN GRCN DAMRS MVGAE GUME SLMRec DRAGON \
    DualGNN MMGCN ItemKNNCBF Pop MGCN --seeds 999 1 2 --grid-max 2 --plan

# The default-configuration table: the finished runs that `compare` (default configuration)
# would reuse, found by results/finished_runs.py (the same lookup as --plan), so that the
# grid runs above, which share the model folders, do not enter it
ZOO="LightGCN SMORE SELFCFED_LGN PGL LayerGCN GRCN DAMRS MVGAE GUME SLMRec DRAGON DualGNN MMGCN ItemKNNCBF Pop MGCN"
python results/seed_table.py results/zoo_tiktok.csv \
    $(python results/finished_runs.py $COMMON -m $ZOO --seeds 999 1 2) \
    $(python results/finished_runs.py ${COMMON/$OUT/saved/qual/zoo_m} -m MENTOR --seeds 999 1 2)
# the equal-budget rows finished so far: compare with --grid-max 2 reuses every run (nothing is trained)
python -m mmrec_egra.compare $COMMON -m LightGCN PGL SELFCFED_LGN DualGNN ItemKNNCBF Pop --seeds 999 1 2 --grid-max 2 \
    --out $OUT/grid2 && cp $OUT/grid2/table.csv results/zoo_tiktok_grid2.csv

# session 4 (2026-12-01/02, night): more of the equal-budget grid (the last combination of each
# grid; the default runs are reused), two or three queues sharing the 2 cores with the EGRA and
# beauty runs of #11. The SMORE queue was stopped (SIGINT, last.pt kept: the same command
# resumes it) at epoch 54 of seed 999's last combination (knn_k 40, 2 layers, cl_loss 0.1: slow
# climb, ~30 s/epoch under that load) in favour of the cheaper models.
python -m mmrec_egra.compare $COMMON -m DRAGON SMORE MVGAE LayerGCN --seeds 999 1 2 --grid-max 2 --out $OUT/eqB &
python -m mmrec_egra.compare $COMMON -m MMGCN MGCN SLMRec GUME --seeds 999 1 2 --grid-max 2 --out $OUT/eqC &
python -m mmrec_egra.compare $COMMON -m MVGAE LayerGCN DRAGON MMGCN --seeds 999 1 2 --grid-max 2 --out $OUT/eqE &
# issue #11 under the same budget: EGRA (static alignment, SIGE teacher: the configuration chosen
# on valid) with its lambda_max grid cut to {0.01, 0.1}; the 0.01 runs are the 3-seed runs of
# tiktok_egra_static_sige_teacher_3seeds.csv, reused
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --longtail --threads 1 --stopping_step 50 \
    --checkpoint_dir saved/qual/tiktok_tsige --teacher_model SIGE --ablation EGRA --arms static_alignment \
    --seeds 999 1 2 --grid-max 2 --out saved/qual/tiktok_tsige/eq2 &
python -m mmrec_egra.compare -d beauty --longtail --threads 1 --stopping_step 50 --checkpoint_dir saved/qual/beauty \
    -m SIGE --seeds 2 --out saved/qual/beauty/s2 &     # results/beauty.md
wait
cp saved/qual/tiktok_tsige/eq2/table.csv results/tiktok_egra_static_sige_teacher_grid2.csv
# the queue of MGCN and the rest (eqC) was stopped (SIGINT) at epoch 3 of MGCN seed 2's cl_loss 0.1
# run: seeds 999 and 1 of MGCN's last combination are finished; SLMRec and GUME not started
# (eqE was stopped the same way after MVGAE, at epoch 1 of LayerGCN seed 999's last combination)
# the equal-budget rows finished so far (reuse only: nothing is trained)
python -m mmrec_egra.compare $COMMON -m LightGCN PGL SELFCFED_LGN DualGNN ItemKNNCBF Pop DRAGON MMGCN MVGAE \
    --seeds 999 1 2 --grid-max 2 --out $OUT/grid2 && cp $OUT/grid2/table.csv results/zoo_tiktok_grid2.csv

# session 5 (2026-12-02): the equal-budget grid continued, three queues sharing the 2 cores
# (the partial runs of session 4 resumed from last.pt: LayerGCN seed 1, SMORE seed 999, MGCN seed 2)
python -m mmrec_egra.compare $COMMON -m LayerGCN SLMRec GUME --seeds 999 1 2 --grid-max 2 --out $OUT/eqF &
python -m mmrec_egra.compare $COMMON -m DAMRS --seeds 999 1 2 --grid-max 2 --out $OUT/eqG &
python -m mmrec_egra.compare $COMMON -m MGCN SMORE --seeds 999 1 2 --grid-max 2 --out $OUT/eqH &
wait
# eqF was stopped (SIGINT, last.pt kept) at epoch 0 of GUME seed 1's last combination, once
# GUME seed 999's had finished; the other two queues finished. Then GUME seeds 1 and 2 side by side:
python -m mmrec_egra.compare $COMMON -m GUME --seeds 1 --grid-max 2 --out $OUT/eqI1 &
python -m mmrec_egra.compare $COMMON -m GUME --seeds 2 --grid-max 2 --out $OUT/eqI2 &
wait
# the equal-budget table of the fifteen models finished (reuse only: nothing is trained)
python -m mmrec_egra.compare $COMMON -m LightGCN PGL SELFCFED_LGN DualGNN ItemKNNCBF Pop DRAGON MMGCN MVGAE \
    LayerGCN SLMRec SMORE DAMRS GUME MGCN --seeds 999 1 2 --grid-max 2 --out $OUT/grid2 \
    && cp $OUT/grid2/table.csv results/zoo_tiktok_grid2.csv

# one model under the equal budget in its own folder, one process per seed, then its row (reuse
# only) appended to zoo_tiktok_grid2.csv (the other models' run folders are not on this machine,
# so the whole table cannot be regenerated here); used for MENTOR (session 6) and GRCN (session 7)
grid2_row_in_own_folder() {
    local model=$1 dir=$2 s
    for s in 999 1 2; do
        python -m mmrec_egra.compare ${COMMON/$OUT/$dir} -m $model --seeds $s --grid-max 2 --out $dir/g2_$s &
    done
    wait
    python -m mmrec_egra.compare ${COMMON/$OUT/$dir} -m $model --seeds 999 1 2 --grid-max 2 --out $dir/grid2
    python -c "import csv,sys; r=list(csv.reader(open('$dir/grid2/table.csv'))); h=next(csv.reader(open('results/zoo_tiktok_grid2.csv'))); assert r[0]==h, (r[0], h); csv.writer(open('results/zoo_tiktok_grid2.csv','a',newline=''),lineterminator='\n').writerows(r[1:])"
}

# session 6 (2026-12-02, a fresh machine: the run folders of sessions 1-5 were gone, so MENTOR's
# default runs were retrained; they reproduced the default rows exactly, test R@20 0.0911 /
# 0.0921 / 0.0963). MENTOR under the equal budget:
grid2_row_in_own_folder MENTOR saved/qual/zoo_m      # appended to the fifteen rows
# DAMRS below LightGCN: the single change denoise_alpha 0 (plain BPR), seed 999
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --longtail --threads 1 --stopping_step 50 \
    --checkpoint_dir saved/qual/zoo_inv -m DAMRS --denoise_alpha 0 --align_weight 0.01 --seeds 999 --out saved/qual/zoo_inv/damrs_a0
# ... and n_mm_layers 0 (no propagation on its content item graph), seed 999
python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ --longtail --threads 1 --stopping_step 50 \
    --checkpoint_dir saved/qual/zoo_inv -m DAMRS --n_mm_layers 0 --denoise_alpha 0.5 --align_weight 0.01 --seeds 999 \
    --out saved/qual/zoo_inv/damrs_mm0
# the two DAMRS rows, appended to zoo_tiktok_investigations.csv (its other rows' folders are not on this machine)
D=saved/qual/zoo_inv/DAMRS-tiktok
python results/seed_table.py /tmp/damrs_inv.csv "tiktok DAMRS denoise_alpha 0=$(ls -d $D/seed=999_denoise_alpha=0_*)" \
    "tiktok DAMRS n_mm_layers 0=$(ls -d $D/seed=999_denoise_alpha=0.5_*)"
python -c "import csv; r=list(csv.reader(open('/tmp/damrs_inv.csv'))); csv.writer(open('results/zoo_tiktok_investigations.csv','a',newline=''),lineterminator='\n').writerows(r[1:])"

# session 7 (2026-12-02; the session-6 machine, so data/office and session 6's folders were still
# there): GRCN under the equal budget, one process per seed (its default runs trained again: the
# session-6 sampled-product change reorders GRCN's sums, so the old default runs are not reused)
grid2_row_in_own_folder GRCN saved/qual/zoo_g      # seventeen models now
