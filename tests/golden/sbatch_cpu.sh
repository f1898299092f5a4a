#!/bin/bash

# Parameters
#SBATCH --array=0-3%4
#SBATCH --cpus-per-task=4
#SBATCH --error=/RESULTS/envs/slurm/%A_%a/%A_%a_0_log.err
#SBATCH --job-name=pql-envs
#SBATCH --mem=32GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/RESULTS/envs/slurm/%A_%a/%A_%a_0_log.out
#SBATCH --signal=USR2@90
#SBATCH --time=90
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /RESULTS/envs/slurm/%A_%a/%A_%a_%t_log.out --error /RESULTS/envs/slurm/%A_%a/%A_%a_%t_log.err python -u -m submitit.core._submit FOLDER
