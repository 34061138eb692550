import type { INodeProperties } from 'n8n-workflow';

const show = (...operation: string[]) => ({ show: { operation } });

export const operationProperty: INodeProperties = {
	displayName: 'Operation',
	name: 'operation',
	type: 'options',
	noDataExpression: true,
	default: 'backup',
	options: [
		{ name: 'Back Up', value: 'backup', action: 'Back up a target', description: 'Start a backup of a target (POST /backups)' },
		{
			name: 'Cancel Job',
			value: 'cancelJob',
			action: 'Cancel a job',
			description: 'A queued job never starts; a running one stops and leaves no partial archive',
		},
		{ name: 'Get Job', value: 'getJob', action: 'Get a job', description: 'A job as it is now' },
		{
			name: 'List Backups',
			value: 'listBackups',
			action: 'List backups',
			description: 'Complete, checksummed backups, newest first',
		},
		{ name: 'List Targets', value: 'listTargets', action: 'List targets', description: 'The configured databases' },
		{
			name: 'Restore',
			value: 'restore',
			action: 'Restore a backup',
			description: 'Restore a backup into its target, another target or another database (POST /restores)',
		},
		{
			name: 'Wait for Job',
			value: 'waitForJob',
			action: 'Wait for a job to finish',
			description: 'The job once it has ended; fails when it failed or was cancelled',
		},
	],
};

const waitFields: INodeProperties[] = [
	{
		displayName: 'Wait for Completion',
		name: 'waitForCompletion',
		type: 'boolean',
		default: true,
		displayOptions: show('backup', 'restore'),
		description:
			'Whether to hold the node until the job ends and put out the finished job (failing when the job fails). Off: put out the queued job at once.',
	},
	{
		displayName: 'Timeout (Seconds)',
		name: 'timeoutSeconds',
		type: 'number',
		typeOptions: { minValue: 1 },
		default: 3600,
		displayOptions: { show: { operation: ['backup', 'restore'], waitForCompletion: [true] } },
		description: 'How long to wait before the node fails; the job itself goes on in the service',
	},
	{
		displayName: 'Timeout (Seconds)',
		name: 'timeoutSeconds',
		type: 'number',
		typeOptions: { minValue: 1 },
		default: 3600,
		displayOptions: show('waitForJob'),
		description: 'How long to wait before the node fails; the job itself goes on in the service',
	},
];

const longPollOption: INodeProperties = {
	displayName: 'Long-Poll Seconds',
	name: 'pollSeconds',
	type: 'number',
	typeOptions: { minValue: 1 },
	default: 30,
	description:
		"How long each status request may be held by the API until the job changes (capped by the service's FLEXDB_WAIT_MAX_SECONDS)",
};

const submitOptions: INodeProperties[] = [
	{
		displayName: 'Engine Options',
		name: 'engineOptions',
		type: 'json',
		default: '{}',
		description:
			'Options for the database engine as a JSON object, e.g. {"collections": ["orders"]} for a MongoDB backup',
	},
	{
		displayName: 'Idempotency Key',
		name: 'idempotencyKey',
		type: 'string',
		default: '',
		description:
			'Sent as Idempotency-Key: the same key and request return the same job instead of starting another. Default: one key per workflow, execution, node and item, so a retried node never starts a second job.',
	},
	longPollOption,
];

export const properties: INodeProperties[] = [
	operationProperty,

	// Back Up
	{
		displayName: 'Target',
		name: 'target',
		type: 'string',
		required: true,
		default: '',
		placeholder: 'orders',
		displayOptions: show('backup'),
		description: 'Name of a configured target (see List Targets)',
	},

	// Restore
	{
		displayName: 'Backup ID',
		name: 'backupId',
		type: 'string',
		required: true,
		default: '',
		displayOptions: show('restore'),
		description: 'The backup to restore, e.g. the backup_id of a finished backup job',
	},
	{
		displayName: 'Target',
		name: 'target',
		type: 'string',
		default: '',
		displayOptions: show('restore'),
		description: "The target to restore into, of the backup's engine. Empty: the backup's own target.",
	},
	{
		displayName: 'Database',
		name: 'database',
		type: 'string',
		default: '',
		displayOptions: show('restore'),
		description:
			"Another database on the target's server (PostgreSQL creates it when missing). Empty: the target's own database.",
	},
	{
		displayName: 'Drop Existing Objects',
		name: 'drop',
		type: 'boolean',
		default: false,
		displayOptions: show('restore'),
		description:
			'Whether to replace what the database holds. Off: a database that already holds tables is refused (target_not_empty).',
	},

	// Get, Wait for, Cancel Job
	{
		displayName: 'Job ID',
		name: 'jobId',
		type: 'string',
		required: true,
		default: '',
		displayOptions: show('getJob', 'waitForJob', 'cancelJob'),
		description: 'The id of a backup or restore job',
	},

	...waitFields,

	// List Backups
	{
		displayName: 'Target',
		name: 'target',
		type: 'string',
		default: '',
		displayOptions: show('listBackups'),
		description: "Only this target's backups. Empty: every target's.",
	},
	{
		displayName: 'Return All',
		name: 'returnAll',
		type: 'boolean',
		default: false,
		displayOptions: show('listBackups'),
		description: 'Whether to return all results or only up to a given limit',
	},
	{
		displayName: 'Limit',
		name: 'limit',
		type: 'number',
		typeOptions: { minValue: 1 },
		default: 50,
		displayOptions: { show: { operation: ['listBackups'], returnAll: [false] } },
		description: 'Max number of results to return',
	},

	// Options
	{
		displayName: 'Options',
		name: 'options',
		type: 'collection',
		placeholder: 'Add Option',
		default: {},
		displayOptions: show('backup'),
		options: submitOptions,
	},
	{
		displayName: 'Options',
		name: 'options',
		type: 'collection',
		placeholder: 'Add Option',
		default: {},
		displayOptions: show('restore'),
		options: [
			{
				displayName: 'Allow System Database',
				name: 'allowSystemDatabase',
				type: 'boolean',
				default: false,
				description:
					"Whether to allow a restore into a server's own database (PostgreSQL postgres; MongoDB admin, local, config)",
			},
			...submitOptions,
		],
	},
	{
		displayName: 'Options',
		name: 'options',
		type: 'collection',
		placeholder: 'Add Option',
		default: {},
		displayOptions: show('waitForJob'),
		options: [longPollOption],
	},
];
