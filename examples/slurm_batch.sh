#!/bin/sh
# A Slurm batch script for an offload program: `sbatch examples/slurm_batch.sh PROGRAM`, where
# PROGRAM is built first (`cargo build --release --example slurm_job` gives
# target/release/examples/slurm_job). The program's pool starts its workers as job steps of
# this job (`Launcher::srun`), one per task the job asks for.
#SBATCH --job-name=offload-example
#SBATCH --ntasks=2
#SBATCH --time=00:10:00
set -eu
exec "$1"
