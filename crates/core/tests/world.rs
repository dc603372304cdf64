//! A build without MPI that a launcher started as one of several processes refuses to fit: N
//! copies of a one-process fit would race on one output folder. (Its own test binary: the
//! launcher's variables are process-wide.)

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_under_mpirun_refuses_and_says_how_to_build_one() {
    assert_eq!(soft_cluster_core::world::launched(), None);
    // SAFETY (every block below): the only test of this binary; nothing else reads the environment meanwhile.
    // srun --mpi=pmix -n 1: one process, not a launch of several.
    unsafe {
        std::env::set_var("PMIX_RANK", "0");
        std::env::set_var("SLURM_STEP_NUM_TASKS", "1");
    }
    assert_eq!(soft_cluster_core::world::launched(), None);
    unsafe { std::env::set_var("SLURM_STEP_NUM_TASKS", "4") };
    assert_eq!(soft_cluster_core::world::launched(), Some((0, Some(4), "PMIX_RANK")));
    unsafe {
        std::env::remove_var("PMIX_RANK");
        std::env::remove_var("SLURM_STEP_NUM_TASKS");
    }
    unsafe {
        std::env::set_var("OMPI_COMM_WORLD_SIZE", "3");
        std::env::set_var("OMPI_COMM_WORLD_RANK", "1");
    }
    assert_eq!(soft_cluster_core::world::launched(), Some((1, Some(3), "OMPI_COMM_WORLD_SIZE")));
    let err = soft_cluster_core::world::processes().err().expect("refused");
    assert_eq!(err.code(), "ERR_INVALID_INPUT");
    let message = err.to_string();
    assert!(message.contains("rank 1 of 3") && message.contains("npm run build:mpi"), "{message}");
}
