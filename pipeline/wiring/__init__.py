"""What the Snakemake rules compute while the DAG is built (on a cluster login node, too): the path layout, the
config-to-flags translation, the cohort's slides and tasks. Standard library, yaml and pandas only, and a test
checks that importing it loads no slide reader, image library, h5py or torch."""
