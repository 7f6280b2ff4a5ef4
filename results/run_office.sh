#!/usr/bin/env bash
# Office (Amazon Office, 384-d MiniLM text features, data/office built by `mmrec-egra prepare`):
# default configuration (first grid value of every model), patience 50, seed 999, two
# processes at a time, one torch thread each. These are the commands this session ran
# (results/office.md says which finished); seeds 1 and 2 and SIGE did not fit.
set -u
OUT=saved/qual/office
COMMON="-d office --longtail --threads 1 --stopping_step 50 --checkpoint_dir $OUT"
# queue 1: the baselines (BPR was started first, stopped after 168 epochs, resumed last)
nice -n 5 python -m mmrec_egra.compare $COMMON -m FREEDOM LightGCN VBPR BPR --seeds 999 --out $OUT/t_cheap999 &
# queue 2: EGRA; its stage 1 trains the MGCN teacher with the same protocol and seed, whose
# best-valid test metrics are the MGCN row (logged in EGRA-office/run.log)
nice -n 5 python -m mmrec_egra.compare $COMMON -m EGRA --seeds 999 --out $OUT/t_egra999 &
wait
# the remaining protocol (not run here): 3 seeds, SIGE, then the gather call
# nice -n 5 python -m mmrec_egra.compare $COMMON -m BPR LightGCN VBPR FREEDOM MGCN EGRA SIGE --seeds 999 1 2 --out $OUT/all

# session 6 (2026-12-02, a fresh machine; data/office rebuilt with the `mmrec-egra prepare` command
# of the README): SMORE, the best zoo model on TikTok, under the equal budget on 3 seeds, and more
# models at their defaults on seed 999 (two queues beside three TikTok runs; both finished)
python -m mmrec_egra.compare $COMMON -m SMORE --seeds 999 --out $OUT/smore999
python -m mmrec_egra.compare $COMMON -m SMORE --seeds 1 2 --out $OUT/smore12
python -m mmrec_egra.compare $COMMON -m SMORE --seeds 999 1 2 --grid-max 2 --out $OUT/smore_grid2 \
    && cp $OUT/smore_grid2/table.csv results/office_smore_grid2.csv
python -m mmrec_egra.compare $COMMON -m LayerGCN SELFCFED_LGN PGL BM3 --seeds 999 --out $OUT/zooA &
python -m mmrec_egra.compare $COMMON -m LGMRec GUME DAMRS FREEDOM --seeds 999 --out $OUT/zooB &
wait

# session 7 (2026-12-02, the session-6 machine: data/office and its runs were still there): the
# equal budget (--grid-max 2) for MGCN, SIGE and the four best seed-999 baselines, 3 seeds each,
# several processes at once (each reuses the finished runs of its model and seed)
python -m mmrec_egra.compare $COMMON -m PGL FREEDOM LGMRec --seeds 999 1 2 --grid-max 2 --out $OUT/eq7A &
for s in 999 1 2; do
    python -m mmrec_egra.compare $COMMON -m MGCN --seeds $s --grid-max 2 --out $OUT/mgcn_g2_$s &
    python -m mmrec_egra.compare $COMMON -m SIGE --seeds $s --grid-max 2 --out $OUT/sige_g2_$s &
done
wait
for s in 999 1 2; do
    python -m mmrec_egra.compare $COMMON -m GUME --seeds $s --grid-max 2 --out $OUT/gume_g2_$s &
done
wait
# the table (reuse only: trains nothing), SMORE's session-6 runs included
python -m mmrec_egra.compare $COMMON -m MGCN SIGE SMORE PGL FREEDOM LGMRec GUME --seeds 999 1 2 --grid-max 2 \
    --out $OUT/grid2 && cp $OUT/grid2/table.csv results/office_grid2.csv
# then DAMRS (three processes), and the table again with it (reuse only)
for s in 999 1 2; do
    python -m mmrec_egra.compare $COMMON -m DAMRS --seeds $s --grid-max 2 --out $OUT/damrs_g2_$s &
done
wait
python -m mmrec_egra.compare $COMMON -m MGCN SIGE SMORE PGL FREEDOM LGMRec GUME DAMRS --seeds 999 1 2 --grid-max 2 \
    --out $OUT/grid2 && cp $OUT/grid2/table.csv results/office_grid2.csv
