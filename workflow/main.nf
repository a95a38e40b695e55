#!/usr/bin/env nextflow
/*
 * spatiome for many samples, as workflow/Snakefile runs it: each sample runs the pipeline one
 * step per task, then its report; with more than one sample, all of them are then combined,
 * corrected and reported together.
 *
 *   nextflow run workflow/main.nf --samples samples.tsv --run_config run.toml --outdir results
 *
 * samples.tsv: a header line and the columns `sample` and `input` (tab-separated, or a .csv);
 * or --input 'data/*.h5ad' for one sample per matching path. run.toml: one configuration
 * for every sample (`spatiome config --default > run.toml`; its [input] table is ignored).
 * The processes are in modules/spatiome.nf; workflow/README.md documents the parameters
 * and profiles.
 */

include { SPATIOME_STEPS; SPATIOME_REPORT; SPATIOME_INTEGRATE } from './modules/spatiome'

// A sample's steps run one after another, each in a task of its own. The number of steps
// depends on run.toml and Nextflow's graph of processes is fixed before the run, so the
// chain has a slot for each position, up to the longest run spatiome can configure; a slot
// beyond the run's last step receives nothing and starts no task.
include { SPATIOME_STEP as STEP_01 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_02 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_03 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_04 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_05 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_06 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_07 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_08 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_09 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_10 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_11 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_12 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_13 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_14 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_15 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_16 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_17 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_18 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_19 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_20 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_21 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_22 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_23 } from './modules/spatiome'
include { SPATIOME_STEP as STEP_24 } from './modules/spatiome'

// The (sample, input) pairs, in the order given: from the sample sheet, or one per path
// matching --input (named as `spatiome run` names its inputs: the file name up to the first
// dot, or the folder above a Space Ranger `outs`).
def read_samples() {
    def pairs = []
    if (params.samples) {
        def sheet = file(params.samples, checkIfExists: true)
        def rows = sheet.splitCsv(header: true, sep: sheet.name.endsWith('.csv') ? ',' : '\t')
        if (!rows || !rows[0].keySet().containsAll(['sample', 'input'])) {
            error("${params.samples} needs a header with the columns 'sample' and 'input'")
        }
        pairs = rows.collect { row -> [row.sample.trim(), file(row.input.trim(), checkIfExists: true)] }
    }
    else if (params.input) {
        def paths = files(params.input, type: 'any')
        if (!paths) {
            error("--input ${params.input} matches no file or folder")
        }
        pairs = paths.sort().collect { path -> [path.name == 'outs' ? path.parent.name : path.name.tokenize('.')[0], path] }
    }
    else {
        error("name the samples: --samples SHEET (columns sample and input) or --input 'GLOB'")
    }
    def names = pairs.collect { pair -> pair[0] }
    def reserved = ['integrated', 'input', 'previous']
    if (names.unique(false).size() != names.size() || names.any { name -> !name || name in reserved }) {
        error("sample names must be distinct, non-empty and none of ${reserved}; got ${names}")
    }
    return pairs
}

// The samples whose run has a step at `position`, each with the folder the step before it
// left (none before the first step) and the name of its step.
def at_step(folders, samples, steps, position) {
    return folders
        .join(samples)
        .combine(steps)
        .filter { sample, previous_step, previous, source, names -> position < names.size() }
        .map { sample, previous_step, previous, source, names -> tuple(sample, source, previous, names[position]) }
}

workflow {
    if (!params.run_config) {
        error("name the run configuration: --run_config run.toml (`spatiome config --default > run.toml`)")
    }
    def pairs = read_samples()
    def run_config = file(params.run_config, checkIfExists: true)
    def samples = channel.fromList(pairs)

    // The steps of one sample's run, in order (the report follows the last), as the list
    // `spatiome config --steps` prints.
    def steps = SPATIOME_STEPS(run_config).map { text ->
        def names = text.tokenize()
        if (names.size() > 24) {
            error("run.toml configures ${names.size()} steps and main.nf chains at most 24: add slots")
        }
        [names]
    }

    def start = samples.map { sample, source -> tuple(sample, '', []) }
    STEP_01(at_step(start, samples, steps, 0), run_config)
    STEP_02(at_step(STEP_01.out.folder, samples, steps, 1), run_config)
    STEP_03(at_step(STEP_02.out.folder, samples, steps, 2), run_config)
    STEP_04(at_step(STEP_03.out.folder, samples, steps, 3), run_config)
    STEP_05(at_step(STEP_04.out.folder, samples, steps, 4), run_config)
    STEP_06(at_step(STEP_05.out.folder, samples, steps, 5), run_config)
    STEP_07(at_step(STEP_06.out.folder, samples, steps, 6), run_config)
    STEP_08(at_step(STEP_07.out.folder, samples, steps, 7), run_config)
    STEP_09(at_step(STEP_08.out.folder, samples, steps, 8), run_config)
    STEP_10(at_step(STEP_09.out.folder, samples, steps, 9), run_config)
    STEP_11(at_step(STEP_10.out.folder, samples, steps, 10), run_config)
    STEP_12(at_step(STEP_11.out.folder, samples, steps, 11), run_config)
    STEP_13(at_step(STEP_12.out.folder, samples, steps, 12), run_config)
    STEP_14(at_step(STEP_13.out.folder, samples, steps, 13), run_config)
    STEP_15(at_step(STEP_14.out.folder, samples, steps, 14), run_config)
    STEP_16(at_step(STEP_15.out.folder, samples, steps, 15), run_config)
    STEP_17(at_step(STEP_16.out.folder, samples, steps, 16), run_config)
    STEP_18(at_step(STEP_17.out.folder, samples, steps, 17), run_config)
    STEP_19(at_step(STEP_18.out.folder, samples, steps, 18), run_config)
    STEP_20(at_step(STEP_19.out.folder, samples, steps, 19), run_config)
    STEP_21(at_step(STEP_20.out.folder, samples, steps, 20), run_config)
    STEP_22(at_step(STEP_21.out.folder, samples, steps, 21), run_config)
    STEP_23(at_step(STEP_22.out.folder, samples, steps, 22), run_config)
    STEP_24(at_step(STEP_23.out.folder, samples, steps, 23), run_config)

    def finished = STEP_01.out.folder
        .mix(
            STEP_02.out.folder,
            STEP_03.out.folder,
            STEP_04.out.folder,
            STEP_05.out.folder,
            STEP_06.out.folder,
            STEP_07.out.folder,
            STEP_08.out.folder,
            STEP_09.out.folder,
            STEP_10.out.folder,
            STEP_11.out.folder,
            STEP_12.out.folder,
            STEP_13.out.folder,
            STEP_14.out.folder,
            STEP_15.out.folder,
            STEP_16.out.folder,
            STEP_17.out.folder,
            STEP_18.out.folder,
            STEP_19.out.folder,
            STEP_20.out.folder,
            STEP_21.out.folder,
            STEP_22.out.folder,
            STEP_23.out.folder,
            STEP_24.out.folder
        )
        .combine(steps)
        .filter { sample, step, folder, names -> step == names.last() }
        .map { sample, step, folder, names -> tuple(sample, folder) }
        .join(samples)
        .map { sample, folder, source -> tuple(sample, source, folder) }
    SPATIOME_REPORT(finished, run_config)

    if (pairs.size() > 1) {
        SPATIOME_INTEGRATE(
            pairs.collect { pair -> pair[0] },
            pairs.collect { pair -> pair[1] },
            SPATIOME_REPORT.out.report.collect(),
            run_config
        )
    }
}
