/*
 * The processes of workflow/main.nf: each runs the `spatiome` command of the Snakefile rule
 * of the same name (step_<STEP>, report, integrate), and SPATIOME_STEPS asks spatiome for the
 * step list as the Snakefile does when it is read.
 *
 * A sample's steps share their results through the step cache in the sample's output folder
 * (SAMPLE/.spatiome_cache). Nextflow runs every task in a folder of its own, so a task starts
 * from a copy of the folder the previous step left (staged as `previous`) and hands its own
 * folder to the next one: the steps before it are restored from the cache, not recomputed.
 * The copy is deep because spatiome appends to SAMPLE/spatiome.log, which a hard link would
 * share with the earlier task.
 */

process SPATIOME_STEPS {
    tag "${run_config.name}"

    input:
    path run_config

    output:
    stdout

    script:
    """
    ${params.spatiome} config --steps ${run_config}
    """
}

process SPATIOME_STEP {
    tag "${sample}: ${step}"

    input:
    tuple val(sample), path(source, stageAs: 'input/*'), path(previous, stageAs: 'previous'), val(step)
    path run_config

    output:
    tuple val(sample), val(step), path("${sample}"), emit: folder
    tuple val(sample), path("${sample}/steps/${step}.done"), emit: marker

    script:
    """
    mkdir -p ${sample}
    if [ -d previous ]; then cp -R previous/. ${sample}/; fi
    ${params.spatiome} run ${run_config} --input ${source} --out ${sample} --until ${step} --no-progress
    """
}

process SPATIOME_REPORT {
    tag "${sample}"
    publishDir params.outdir, mode: params.publish_dir_mode

    input:
    tuple val(sample), path(source, stageAs: 'input/*'), path(previous, stageAs: 'previous')
    path run_config

    output:
    tuple val(sample), path("${sample}"), emit: folder
    path "${sample}/report.html", emit: report

    script:
    """
    mkdir -p ${sample}
    cp -R previous/. ${sample}/
    ${params.spatiome} run ${run_config} --input ${source} --out ${sample} --no-progress
    """
}

process SPATIOME_INTEGRATE {
    tag "${names.size()} samples"
    publishDir params.outdir, mode: params.publish_dir_mode

    input:
    val names
    path sources, stageAs: 'input*/*'
    path reports, stageAs: 'reports/report*.html'
    path run_config

    output:
    path 'integrated', emit: folder
    path 'integrated/report.html', emit: report

    script:
    def inputs = (sources instanceof List ? sources : [sources]).collect { source -> "--input ${source}" }.join(' ')
    """
    ${params.spatiome} run ${run_config} ${inputs} --sample-names ${names.join(',')} --out integrated --no-progress
    """
}
