import type {
	IDataObject,
	IExecuteFunctions,
	INodeExecutionData,
	INodeType,
	INodeTypeDescription,
} from 'n8n-workflow';
import { NodeConnectionTypes, NodeOperationError, jsonParse } from 'n8n-workflow';

import { CREDENTIALS_TYPE, FlexDbClient, type FlexDbJob } from './FlexDbClient';
import { properties } from './FlexDbDescription';

type Operation = (ctx: IExecuteFunctions, client: FlexDbClient, itemIndex: number) => Promise<IDataObject[]>;

function options(ctx: IExecuteFunctions, itemIndex: number): IDataObject {
	return ctx.getNodeParameter('options', itemIndex, {}) as IDataObject;
}

function engineOptions(ctx: IExecuteFunctions, itemIndex: number): IDataObject {
	const raw = options(ctx, itemIndex).engineOptions ?? {};
	const parsed = typeof raw === 'string' ? jsonParse<unknown>(raw || '{}', { errorMessage: 'Engine Options is not valid JSON' }) : raw;
	if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
		throw new NodeOperationError(ctx.getNode(), 'Engine Options must be a JSON object', { itemIndex });
	}
	return parsed as IDataObject;
}

/**
 * One key per workflow, execution, node, run and item: n8n's "Retry On Fail", or a repeated
 * POST after a lost answer, gets the job the first attempt started instead of a second one,
 * while a node that runs again in a loop of the workflow starts a new job each time.
 */
function idempotencyKey(ctx: IExecuteFunctions, itemIndex: number, kind: string): string {
	const given = String(options(ctx, itemIndex).idempotencyKey ?? '');
	if (given) {
		return given;
	}
	const run = ctx.evaluateExpression('{{ $runIndex }}', itemIndex);
	const workflow = ctx.getWorkflow().id ?? 'unsaved';
	return `n8n-${workflow}-${ctx.getExecutionId()}-${ctx.getNode().id}-${String(run)}-${itemIndex}-${kind}`;
}

/** Submits a job; with "Wait for Completion" on, the finished job (or the job's own error). */
async function submitJob(
	ctx: IExecuteFunctions,
	client: FlexDbClient,
	itemIndex: number,
	path: '/backups' | '/restores',
	body: IDataObject,
): Promise<IDataObject[]> {
	const kind = path === '/backups' ? 'backup' : 'restore';
	const job = await client.submit(path, body, idempotencyKey(ctx, itemIndex, kind));
	if (!(ctx.getNodeParameter('waitForCompletion', itemIndex, true) as boolean)) {
		return [job];
	}
	return [await waitFor(ctx, client, itemIndex, job.id)];
}

async function waitFor(ctx: IExecuteFunctions, client: FlexDbClient, itemIndex: number, jobId: string): Promise<FlexDbJob> {
	const timeout = ctx.getNodeParameter('timeoutSeconds', itemIndex, 3600) as number;
	const pollSeconds = Number(options(ctx, itemIndex).pollSeconds ?? 30);
	return client.requireSucceeded(await client.waitUntilDone(jobId, timeout, pollSeconds));
}

const jobId = (ctx: IExecuteFunctions, itemIndex: number) => String(ctx.getNodeParameter('jobId', itemIndex)).trim();
const text = (ctx: IExecuteFunctions, name: string, itemIndex: number) =>
	String(ctx.getNodeParameter(name, itemIndex, '') ?? '').trim() || null;

const operations: Record<string, Operation> = {
	backup: async (ctx, client, i) =>
		submitJob(ctx, client, i, '/backups', { target: text(ctx, 'target', i), options: engineOptions(ctx, i) }),

	restore: async (ctx, client, i) =>
		submitJob(ctx, client, i, '/restores', {
			backup_id: text(ctx, 'backupId', i),
			target: text(ctx, 'target', i),
			database: text(ctx, 'database', i),
			drop: ctx.getNodeParameter('drop', i, false) as boolean,
			allow_system_database: Boolean(options(ctx, i).allowSystemDatabase ?? false),
			options: engineOptions(ctx, i),
		}),

	getJob: async (_ctx, client, i) => [await client.job(jobId(_ctx, i))],

	waitForJob: async (ctx, client, i) => [await waitFor(ctx, client, i, jobId(ctx, i))],

	cancelJob: async (ctx, client, i) => [await client.cancel(jobId(ctx, i))],

	listBackups: async (ctx, client, i) => {
		const returnAll = ctx.getNodeParameter('returnAll', i, false) as boolean;
		const limit = returnAll ? Number.POSITIVE_INFINITY : (ctx.getNodeParameter('limit', i, 50) as number);
		const target = text(ctx, 'target', i);
		return client.list('/backups', target ? { target } : {}, limit);
	},

	listTargets: async (_ctx, client) => (await client.get('/targets')).items as IDataObject[],
};

export class FlexDb implements INodeType {
	description: INodeTypeDescription = {
		displayName: 'Flexible Database',
		name: 'flexDb',
		icon: 'file:../../icons/flexdb.svg',
		group: ['transform'],
		version: 1,
		subtitle: '={{ $parameter["operation"] }}',
		description: 'Back up and restore PostgreSQL and MongoDB databases with Flexible Database',
		defaults: { name: 'Flexible Database' },
		inputs: [NodeConnectionTypes.Main],
		outputs: [NodeConnectionTypes.Main],
		credentials: [{ name: CREDENTIALS_TYPE, required: true }],
		properties,
	};

	async execute(this: IExecuteFunctions): Promise<INodeExecutionData[][]> {
		const items = this.getInputData();
		const operation = this.getNodeParameter('operation', 0) as string;
		const run = operations[operation];
		if (!run) {
			throw new NodeOperationError(this.getNode(), `Unknown operation "${operation}"`);
		}
		const out: INodeExecutionData[] = [];
		for (let i = 0; i < items.length; i++) {
			try {
				const client = await FlexDbClient.forItem(this, i);
				for (const json of await run(this, client, i)) {
					out.push({ json, pairedItem: { item: i } });
				}
			} catch (error) {
				if (!this.continueOnFail()) {
					throw error;
				}
				out.push({ json: failureItem(error as Error), pairedItem: { item: i } });
			}
		}
		return [out];
	}
}

/** What "Continue On Fail" passes on: n8n's usual `error` message, plus the service's code (and the job). */
function failureItem(error: Error & { context?: IDataObject }): IDataObject {
	const { code, job, httpStatus } = error.context ?? {};
	return { error: error.message, code: code ?? null, ...(httpStatus ? { httpStatus } : {}), ...(job ? { job } : {}) };
}
