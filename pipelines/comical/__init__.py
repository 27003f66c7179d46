"""Paper 000 (COMICAL): catalog SNP sets, disease-mediated SNP-IDP pairs and their store, association tests of a
trained run, and scoring against the simulator's planted truth."""
