# Download jobs (POST /jobs, GET /jobs/{id}, DELETE /jobs/{id}) for the XOMCLOUD infrastructure.
#
# An add-on file for the xomcloud-infrastructure repository: copy it into its terraform/ folder
# next to lambda.tf. It refers to that repository's resources by their names there
# (aws_lambda_function.download_tracks, aws_iam_role.lambda_role, aws_s3_bucket.downloads,
# aws_ecr_repository.download_tracks, aws_kms_key.web_app, module.api, local.lambda_variables,
# local.standard_tags, local.web_app_account_id, var.app_name, var.aws_region,
# var.lambda_trace_mode) and mirrors the jobs resources of this repository's template.yaml.
#
# Two changes belong in that repository's own files, shown as comments at the end of this one:
# the download function's environment (lambda.tf) and a lifecycle rule for jobs/
# (s3_downloads.tf).
#
# The worker runs the download image with the image command `jobs-worker`. Like the other
# functions, its image_uri is left to the deploy workflow, which updates xomcloud-jobs-worker
# with every image it pushes to the download repository.

# template.yaml's TrackWorkersMaxConcurrency.
variable "track_workers_max_concurrency" {
  description = "Maximum concurrency of the track queue's event source mapping: how many tracks are fetched from SoundCloud at once across all jobs (2 to 1000). A bound on the mapping, not reserved concurrency, which fails on accounts with a low concurrency quota."
  type        = number
  default     = 20

  validation {
    condition     = var.track_workers_max_concurrency >= 2 && var.track_workers_max_concurrency <= 1000
    error_message = "track_workers_max_concurrency must be between 2 and 1000 (the limits of an SQS event source mapping's maximum concurrency)."
  }
}

locals {
  # The worker's timeout, which also sets the queues' visibility timeout (AWS's guidance for SQS
  # event sources: six times the function's timeout). A local, not a reference, because the
  # worker's environment refers to the queues.
  jobs_worker_timeout = 900

  # The jobs API reads an Idempotency-Key header; browsers must be allowed to send it.
  jobs_allow_headers = concat(local.api_allow_headers, ["Idempotency-Key"])
  jobs_allow_origin  = "https://xomcloud.xomware.com"

  # The REST API's /jobs (POST) and /jobs/{id} (GET, DELETE), all behind the authorizer.
  jobs_endpoints = [
    {
      name        = "create"
      resource    = "jobs"
      http_method = "POST"
    },
    {
      name        = "show"
      resource    = "job"
      http_method = "GET"
    },
    {
      name        = "cancel"
      resource    = "job"
      http_method = "DELETE"
    },
  ]

  jobs_endpoints_map = { for ep in local.jobs_endpoints : ep.name => ep }

  # The CORS preflight, one per resource.
  jobs_preflight = {
    jobs = "POST,OPTIONS"
    job  = "GET,DELETE,OPTIONS"
  }
}

#######################################
# Job records: one item per job and one per track, expired by DynamoDB's TTL
#######################################

resource "aws_dynamodb_table" "jobs" {
  name         = "${var.app_name}-jobs"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = merge(local.standard_tags, tomap({ "name" = "${var.app_name}-jobs" }))
}

#######################################
# The queue of job steps, the queue of tracks and their dead-letter queue
#######################################

# Someone reads this: it receives from both the jobs queue and the track queue, and the worker
# marks each dead track failed (a dead start or assemble step: its job), with a reason for its
# caller.
resource "aws_sqs_queue" "jobs_dlq" {
  name                      = "${var.app_name}-jobs-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = merge(local.standard_tags, tomap({ "name" = "${var.app_name}-jobs-dlq" }))
}

resource "aws_sqs_queue" "jobs" {
  name                       = "${var.app_name}-jobs"
  visibility_timeout_seconds = 6 * local.jobs_worker_timeout
  sqs_managed_sse_enabled    = true
  tags                       = merge(local.standard_tags, tomap({ "name" = "${var.app_name}-jobs" }))

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.jobs_dlq.arn
    maxReceiveCount     = 3
  })
}

# One message per track of a job: the worker fetches one track per invocation, as many at once as
# var.track_workers_max_concurrency allows.
resource "aws_sqs_queue" "tracks" {
  name                       = "${var.app_name}-tracks"
  visibility_timeout_seconds = 6 * local.jobs_worker_timeout
  sqs_managed_sse_enabled    = true
  tags                       = merge(local.standard_tags, tomap({ "name" = "${var.app_name}-tracks" }))

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.jobs_dlq.arn
    maxReceiveCount     = 3
  })
}

#######################################
# The jobs worker: the download image, command `jobs-worker`
#######################################

resource "aws_cloudwatch_log_group" "jobs_worker" {
  name              = "/aws/lambda/${var.app_name}-jobs-worker"
  retention_in_days = 14
  tags              = merge(local.standard_tags, tomap({ "name" = "${var.app_name}-jobs-worker" }))
}

resource "aws_lambda_function" "jobs_worker" {
  function_name = "${var.app_name}-jobs-worker"
  description   = "Runs download jobs step by step from SQS: resolves links, fetches one track per message with scdl into the shared track cache (.cache/tracks/), zips them to S3."
  package_type  = "Image"
  architectures = ["x86_64"]
  image_uri     = "${aws_ecr_repository.download_tracks.repository_url}:latest"
  # Up to 4 scdl (Python) processes plus ffmpeg at once; Lambda's CPU share grows with memory.
  memory_size = 2048
  timeout     = local.jobs_worker_timeout
  role        = aws_iam_role.jobs_worker.arn

  ephemeral_storage {
    size = 2048
  }

  environment {
    variables = merge(local.lambda_variables, {
      S3_DOWNLOAD_BUCKET_NAME = aws_s3_bucket.downloads.id
      JOBS_TABLE              = aws_dynamodb_table.jobs.name
      JOBS_QUEUE_URL          = aws_sqs_queue.jobs.url
      TRACK_QUEUE_URL         = aws_sqs_queue.tracks.url
      JOBS_DLQ_ARN            = aws_sqs_queue.jobs_dlq.arn
    })
  }

  image_config {
    command = ["jobs-worker"]
  }

  tags = merge(local.standard_tags, tomap({ "name" = "${var.app_name}-jobs-worker" }))

  tracing_config {
    mode = var.lambda_trace_mode
  }

  lifecycle {
    ignore_changes = [
      description,
      filename,
      source_code_hash,
      layers,
      image_uri
    ]
  }

  depends_on = [
    aws_iam_role_policy.jobs_worker_policy,
    aws_iam_role.jobs_worker,
    aws_cloudwatch_log_group.jobs_worker
  ]
}

# One job step (start, assemble) per invocation; a failed record goes back to the queue alone.
resource "aws_lambda_event_source_mapping" "jobs" {
  event_source_arn        = aws_sqs_queue.jobs.arn
  function_name           = aws_lambda_function.jobs_worker.arn
  batch_size              = 1
  function_response_types = ["ReportBatchItemFailures"]
}

# One track per invocation; maximum_concurrency bounds the fetches from SoundCloud (not reserved
# concurrency, which fails on accounts with a low concurrency quota).
resource "aws_lambda_event_source_mapping" "tracks" {
  event_source_arn        = aws_sqs_queue.tracks.arn
  function_name           = aws_lambda_function.jobs_worker.arn
  batch_size              = 1
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.track_workers_max_concurrency
  }
}

# Messages that failed maxReceiveCount times on either queue: the worker marks their tracks (or
# jobs) failed.
resource "aws_lambda_event_source_mapping" "jobs_dlq" {
  event_source_arn        = aws_sqs_queue.jobs_dlq.arn
  function_name           = aws_lambda_function.jobs_worker.arn
  batch_size              = 1
  function_response_types = ["ReportBatchItemFailures"]
}

#######################################
# IAM: the worker's own role (least privilege)
#######################################

data "aws_iam_policy_document" "jobs_worker_assume_role" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "jobs_worker" {
  name               = "${var.app_name}-jobs-worker-exec"
  tags               = merge(local.standard_tags, tomap({ "name" = "${var.app_name}-jobs-worker-exec" }))
  assume_role_policy = data.aws_iam_policy_document.jobs_worker_assume_role.json
}

data "aws_iam_policy_document" "jobs_worker_policy" {
  # Secrets: the SoundCloud client id (scdl), under /${var.app_name}.
  statement {
    sid       = "ReadSecrets"
    effect    = "Allow"
    actions   = ["ssm:GetParameter"]
    resources = ["arn:aws:ssm:${var.aws_region}:${local.web_app_account_id}:parameter/${var.app_name}/*"]
  }
  # SecureString parameters: decrypting through SSM only.
  statement {
    sid       = "DecryptSecrets"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = ["arn:aws:kms:${var.aws_region}:${local.web_app_account_id}:key/*"]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${var.aws_region}.amazonaws.com"]
    }
  }
  # PutObject covers the multipart upload of the zip and each stored track; GetObject reads the
  # stored tracks back into the zip and is what the presigned links are signed for.
  statement {
    sid    = "WriteDownloads"
    effect = "Allow"
    actions = [
      "s3:PutObject",
      "s3:GetObject",
      "s3:AbortMultipartUpload"
    ]
    resources = ["${aws_s3_bucket.downloads.arn}/*"]
  }
  # The bucket is encrypted with the web app's KMS key (SSE-KMS): writing and reading objects
  # needs it, through S3 only.
  statement {
    sid    = "DownloadsKey"
    effect = "Allow"
    actions = [
      "kms:GenerateDataKey",
      "kms:Decrypt"
    ]
    resources = [aws_kms_key.web_app.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.aws_region}.amazonaws.com"]
    }
  }
  # The per-job track objects, deleted once the zip is written.
  statement {
    sid       = "DeleteJobTracks"
    effect    = "Allow"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.downloads.arn}/jobs/*"]
  }
  statement {
    sid       = "ListJobTracks"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.downloads.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["jobs/*"]
    }
  }
  # UpdateItem also gives a finished job's place back to its caller's count; PutItem and
  # DeleteItem take and give back a track's lease (lease#… items) in the cache. BatchWriteItem:
  # resolution rewrites the job's track items; settling a track is an UpdateItem ADD on the job
  # item's counter. BatchGetItem: a track step reads the job's status and its track in one request.
  statement {
    sid    = "RunJobs"
    effect = "Allow"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
      "dynamodb:PutItem",
      "dynamodb:DeleteItem",
      "dynamodb:BatchWriteItem",
      "dynamodb:BatchGetItem"
    ]
    resources = [aws_dynamodb_table.jobs.arn]
  }
  # The start step sends the track steps (SendMessageBatch), the last track settled the assemble
  # step, and a track short of time sends itself again.
  statement {
    sid     = "QueueSteps"
    effect  = "Allow"
    actions = ["sqs:SendMessage"]
    resources = [
      aws_sqs_queue.jobs.arn,
      aws_sqs_queue.tracks.arn
    ]
  }
  # What the event source mappings need (SAM adds the same for its SQS events).
  statement {
    sid    = "ConsumeJobs"
    effect = "Allow"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes"
    ]
    resources = [
      aws_sqs_queue.jobs.arn,
      aws_sqs_queue.tracks.arn,
      aws_sqs_queue.jobs_dlq.arn
    ]
  }
  statement {
    sid    = "Logs"
    effect = "Allow"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents"
    ]
    resources = ["${aws_cloudwatch_log_group.jobs_worker.arn}:*"]
  }
  # X-Ray requires resource = "*" per AWS docs (tracing_config mode = var.lambda_trace_mode).
  statement {
    sid    = "Tracing"
    effect = "Allow"
    actions = [
      "xray:PutTraceSegments",
      "xray:PutTelemetryRecords"
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "jobs_worker_policy" {
  name   = "${var.app_name}-jobs-worker-policy"
  role   = aws_iam_role.jobs_worker.id
  policy = data.aws_iam_policy_document.jobs_worker_policy.json
}

#######################################
# IAM: what the download function adds for the jobs API
#######################################

# aws_iam_role.lambda_role is shared by the functions of iam_lambda.tf; this second inline
# policy on it adds only the jobs statements of template.yaml's download function (its S3, SSM
# and KMS rights are already in lambda_role_policy).
data "aws_iam_policy_document" "lambda_role_jobs" {
  # POST /jobs writes the job item and its track items (BatchWriteItem) and claims an
  # Idempotency-Key; GET reads them (Query); DELETE cancels (UpdateItem). Every creation also
  # reads and updates its caller's rate-limit bucket and active-jobs count (caller#… items).
  statement {
    sid    = "Jobs"
    effect = "Allow"
    actions = [
      "dynamodb:PutItem",
      "dynamodb:GetItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
      "dynamodb:BatchWriteItem"
    ]
    resources = [aws_dynamodb_table.jobs.arn]
  }
  statement {
    sid       = "QueueJobs"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.jobs.arn]
  }
}

resource "aws_iam_role_policy" "lambda_role_jobs" {
  name   = "${var.app_name}-lambda-role-jobs"
  role   = aws_iam_role.lambda_role.id
  policy = data.aws_iam_policy_document.lambda_role_jobs.json
}

#######################################
# API routes: /jobs and /jobs/{id} on the REST API of module.api
#######################################

# Outside module.api, like api_gateway_auth.tf: the module puts every endpoint one level under
# its service's path (/jobs/<path_part>), so it can express neither POST on /jobs itself nor
# two methods on /jobs/{id}. These methods use the module's authorizer (authorization CUSTOM).
#
# The module's deployment is redeployed on every apply (its trigger is a timestamp) but does not
# depend on these methods: on the apply that creates them, run `terraform apply` once more (or
# `aws apigateway create-deployment --rest-api-id ... --stage-name dev`) so the stage serves them.

resource "aws_api_gateway_resource" "jobs" {
  rest_api_id = module.api.rest_api_id
  parent_id   = module.api.rest_api_root_resource_id
  path_part   = "jobs"
}

resource "aws_api_gateway_resource" "job" {
  rest_api_id = module.api.rest_api_id
  parent_id   = aws_api_gateway_resource.jobs.id
  path_part   = "{id}"
}

locals {
  jobs_resource_ids = {
    jobs = aws_api_gateway_resource.jobs.id
    job  = aws_api_gateway_resource.job.id
  }
}

resource "aws_api_gateway_method" "jobs_endpoint" {
  for_each      = local.jobs_endpoints_map
  rest_api_id   = module.api.rest_api_id
  resource_id   = local.jobs_resource_ids[each.value.resource]
  http_method   = each.value.http_method
  authorization = "CUSTOM"
  authorizer_id = module.api.authorizer_id
}

resource "aws_api_gateway_integration" "jobs_endpoint" {
  for_each                = local.jobs_endpoints_map
  rest_api_id             = module.api.rest_api_id
  resource_id             = local.jobs_resource_ids[each.value.resource]
  http_method             = aws_api_gateway_method.jobs_endpoint[each.key].http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = aws_lambda_function.download_tracks.invoke_arn
  content_handling        = "CONVERT_TO_TEXT"
}

resource "aws_lambda_permission" "jobs_endpoint" {
  statement_id  = "AllowJobsApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.download_tracks.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${module.api.rest_api_execution_arn}/*/*/jobs*"
}

#######################################
# CORS — OPTIONS preflight per resource (as in api_gateway_auth.tf)
#######################################

resource "aws_api_gateway_method" "jobs_options" {
  for_each      = local.jobs_preflight
  rest_api_id   = module.api.rest_api_id
  resource_id   = local.jobs_resource_ids[each.key]
  http_method   = "OPTIONS"
  authorization = "NONE"
}

resource "aws_api_gateway_integration" "jobs_options" {
  for_each    = local.jobs_preflight
  rest_api_id = module.api.rest_api_id
  resource_id = local.jobs_resource_ids[each.key]
  http_method = aws_api_gateway_method.jobs_options[each.key].http_method
  type        = "MOCK"

  request_templates = {
    "application/json" = "{ \"statusCode\": 200 }"
  }

  content_handling = "CONVERT_TO_TEXT"
}

resource "aws_api_gateway_method_response" "jobs_options" {
  for_each    = local.jobs_preflight
  rest_api_id = module.api.rest_api_id
  resource_id = local.jobs_resource_ids[each.key]
  http_method = aws_api_gateway_method.jobs_options[each.key].http_method
  status_code = "200"

  response_models = {
    "application/json" = "Empty"
  }

  response_parameters = {
    "method.response.header.Access-Control-Allow-Headers"     = true
    "method.response.header.Access-Control-Allow-Methods"     = true
    "method.response.header.Access-Control-Allow-Origin"      = true
    "method.response.header.Access-Control-Allow-Credentials" = true
  }
}

resource "aws_api_gateway_integration_response" "jobs_options" {
  for_each    = local.jobs_preflight
  rest_api_id = module.api.rest_api_id
  resource_id = local.jobs_resource_ids[each.key]
  http_method = aws_api_gateway_method.jobs_options[each.key].http_method
  status_code = "200"

  response_parameters = {
    "method.response.header.Access-Control-Allow-Headers"     = "'${join(",", local.jobs_allow_headers)}'"
    "method.response.header.Access-Control-Allow-Methods"     = "'${each.value}'"
    "method.response.header.Access-Control-Allow-Origin"      = "'${local.jobs_allow_origin}'"
    "method.response.header.Access-Control-Allow-Credentials" = "'true'"
  }

  depends_on = [aws_api_gateway_method_response.jobs_options]
}

#######################################
# Changes to that repository's own files
#######################################

# lambda.tf, aws_lambda_function.download_tracks: the jobs API needs the table and the queue
# (without both it answers /jobs with 404 and /download works as before). With the table, the
# per-caller limits turn on too (RATE_LIMIT_PER_MINUTE 10, RATE_LIMIT_BURST 5,
# MAX_ACTIVE_JOBS_PER_CALLER 3 unless set here); without it only API Gateway's throttling applies:
#
#   environment {
#     variables = merge(local.lambda_variables, {
#       S3_DOWNLOAD_BUCKET_NAME = aws_s3_bucket.downloads.id
#       JOBS_TABLE              = aws_dynamodb_table.jobs.name
#       JOBS_QUEUE_URL          = aws_sqs_queue.jobs.url
#     })
#   }

# s3_downloads.tf, aws_s3_bucket_lifecycle_configuration.downloads: a bucket has one lifecycle
# configuration, so a second resource here would replace that one on every apply. Add this rule
# to it instead (a job's finished tracks until its zip is written; the worker deletes them then):
#
#   rule {
#     id     = "expire-job-tracks-24h"
#     status = "Enabled"
#
#     filter {
#       prefix = "jobs/"
#     }
#
#     expiration {
#       days = 1
#     }
#   }
#
# and this one for the shared track cache (.cache/tracks/…: fetched tracks that every job reuses,
# TRACK_CACHE_DAYS). The shortest of overlapping rules wins, so a rule of that configuration that
# expires every object after a day also ends cached tracks after a day: give it prefixes that
# .cache/ does not match (as template.yaml does, one per first character of an owner) to keep
# them the full TRACK_CACHE_DAYS.
#
#   rule {
#     id     = "expire-track-cache"
#     status = "Enabled"
#
#     filter {
#       prefix = ".cache/"
#     }
#
#     expiration {
#       days = 7
#     }
#   }
