import type {
	IDataObject,
	IExecuteFunctions,
	IHttpRequestMethods,
	IN8nHttpFullResponse,
	JsonObject,
} from 'n8n-workflow';
import { NodeApiError, NodeOperationError, sleepWithAbort } from 'n8n-workflow';

export const CREDENTIALS_TYPE = 'flexDbApi';

/** A job as the API shows it (GET /jobs/<id>). */
export interface FlexDbJob extends IDataObject {
	id: string;
	kind: string;
	status: string;
	done: boolean;
	error: { code: string; message: string } | null;
}

export interface Page extends IDataObject {
	items: IDataObject[];
	next: string | null;
}

interface RequestArguments {
	qs?: IDataObject;
	body?: IDataObject;
	headers?: IDataObject;
	timeoutSeconds?: number;
}

// Used when the API asks to come back later without saying when.
const DEFAULT_RETRY_AFTER_SECONDS = 2;
// A long-poll request may take its whole wait; the HTTP timeout leaves room for the answer.
const REQUEST_MARGIN_SECONDS = 15;
const PLAIN_REQUEST_TIMEOUT_SECONDS = 30;

/** Puts the service's stable error code where error workflows and "Continue On Fail" find it. */
function tagged<E extends NodeApiError | NodeOperationError>(error: E, code: string, extra: IDataObject = {}): E {
	Object.assign(error.context, { code, ...extra });
	return error;
}

/** The Flexible Database HTTP API for one item of one execution of the node. */
export class FlexDbClient {
	private constructor(
		private readonly ctx: IExecuteFunctions,
		private readonly baseUrl: string,
		private readonly itemIndex: number,
	) {}

	static async forItem(ctx: IExecuteFunctions, itemIndex: number): Promise<FlexDbClient> {
		const credentials = await ctx.getCredentials(CREDENTIALS_TYPE, itemIndex);
		return new FlexDbClient(ctx, String(credentials.baseUrl).replace(/\/+$/, ''), itemIndex);
	}

	async request(method: IHttpRequestMethods, path: string, args: RequestArguments = {}): Promise<IN8nHttpFullResponse> {
		const timeoutSeconds = args.timeoutSeconds ?? PLAIN_REQUEST_TIMEOUT_SECONDS;
		let response: IN8nHttpFullResponse;
		try {
			response = (await this.ctx.helpers.httpRequestWithAuthentication.call(this.ctx, CREDENTIALS_TYPE, {
				method,
				url: `${this.baseUrl}${path}`,
				qs: args.qs,
				body: args.body,
				headers: { Accept: 'application/json, application/problem+json', ...args.headers },
				json: true,
				returnFullResponse: true,
				// Error answers are problem+json with a stable code: read them here instead of n8n's generic error.
				ignoreHttpStatusErrors: true,
				timeout: timeoutSeconds * 1000,
				abortSignal: this.ctx.getExecutionCancelSignal(),
			})) as IN8nHttpFullResponse;
		} catch (error) {
			// n8n hands back its own NodeApiError for network failures; the constructor returns it as is.
			const failure = new NodeApiError(this.ctx.getNode(), error as JsonObject, { itemIndex: this.itemIndex });
			const cause = failure.messages[0] ?? failure.message;
			failure.description = `No answer from the FlexDB API at ${this.baseUrl} (${cause})`;
			throw tagged(failure, 'api_unreachable');
		}
		response.body = parseJson(response.body);
		if (response.statusCode >= 400) {
			throw this.problemError(response);
		}
		return response;
	}

	private problemError(response: IN8nHttpFullResponse): NodeApiError {
		const problem = (isObject(response.body) ? response.body : {}) as IDataObject;
		const code = typeof problem.code === 'string' ? problem.code : `http_${response.statusCode}`;
		const detail = String(problem.detail ?? problem.title ?? response.statusMessage ?? 'no details');
		const pointers = Array.isArray(problem.errors)
			? (problem.errors as IDataObject[]).map((e) => `${String(e.pointer)}: ${String(e.detail)}`).join('; ')
			: '';
		return tagged(
			new NodeApiError(this.ctx.getNode(), problem as JsonObject, {
				message: `${code}: ${detail}`,
				description: pointers || (problem.title ? String(problem.title) : undefined),
				httpCode: String(response.statusCode),
				itemIndex: this.itemIndex,
			}),
			code,
			{ httpStatus: response.statusCode },
		);
	}

	async get(path: string, qs?: IDataObject): Promise<IDataObject> {
		return (await this.request('GET', path, { qs })).body as IDataObject;
	}

	/** POST /backups or /restores: the queued job. The key makes a repeated submit return the same job. */
	async submit(path: '/backups' | '/restores', body: IDataObject, idempotencyKey: string): Promise<FlexDbJob> {
		const response = await this.request('POST', path, { body, headers: { 'Idempotency-Key': idempotencyKey } });
		return response.body as FlexDbJob;
	}

	async job(jobId: string): Promise<FlexDbJob> {
		return (await this.get(`/jobs/${encodeURIComponent(jobId)}`)) as FlexDbJob;
	}

	async cancel(jobId: string): Promise<FlexDbJob> {
		return (await this.request('POST', `/jobs/${encodeURIComponent(jobId)}/cancel`)).body as FlexDbJob;
	}

	/**
	 * The job once it is done, long-polling `GET /jobs/<id>?wait=N`: the API answers as soon as
	 * the status changes. An answer that comes early with the status unchanged means the API had
	 * no wait slot free; then the next poll waits for Retry-After, as the API asks.
	 */
	async waitUntilDone(jobId: string, timeoutSeconds: number, pollSeconds: number): Promise<FlexDbJob> {
		const deadline = Date.now() + timeoutSeconds * 1000;
		const path = `/jobs/${encodeURIComponent(jobId)}`;
		let job = await this.job(jobId);
		while (!job.done) {
			const remaining = Math.floor((deadline - Date.now()) / 1000);
			if (remaining <= 0) {
				throw tagged(
					new NodeOperationError(
						this.ctx.getNode(),
						`FlexDB ${job.kind} job ${job.id} is still ${job.status} after ${timeoutSeconds} s`,
						{
							description: 'The job goes on in the service; wait for it again with "Wait for Job", or raise the timeout.',
							itemIndex: this.itemIndex,
						},
					),
					'wait_timeout',
					{ job },
				);
			}
			const wait = Math.max(1, Math.min(pollSeconds, remaining));
			const asked = Date.now();
			const response = await this.request('GET', path, {
				qs: { wait },
				timeoutSeconds: wait + REQUEST_MARGIN_SECONDS,
			});
			const next = response.body as FlexDbJob;
			const answeredEarly = Date.now() - asked < wait * 1000;
			if (!next.done && next.status === job.status && answeredEarly) {
				const retryAfter = Number(response.headers['retry-after']) || DEFAULT_RETRY_AFTER_SECONDS;
				await sleepWithAbort(Math.min(retryAfter, remaining) * 1000, this.ctx.getExecutionCancelSignal());
			}
			job = next;
		}
		return job;
	}

	/** Fails the item when the job ended other than `succeeded`, with the job's own error code. */
	requireSucceeded(job: FlexDbJob): FlexDbJob {
		if (job.status === 'succeeded') {
			return job;
		}
		const code = job.error?.code ?? (job.status === 'cancelled' ? 'job_cancelled' : `job_${job.status}`);
		const message = job.error?.message ?? `The job ended ${job.status}.`;
		throw tagged(
			new NodeOperationError(this.ctx.getNode(), `FlexDB ${job.kind} job ${job.id} ${job.status}: ${code} - ${message}`, {
				description: `Job ${job.id} on target ${String(job.target)} ended ${job.status}.`,
				itemIndex: this.itemIndex,
			}),
			code,
			{ job },
		);
	}

	/**
	 * Every item of a list route, following `next` by its cursor: the links the API builds may
	 * name an address n8n cannot reach (behind a proxy), the base URL always works.
	 */
	async list(path: string, qs: IDataObject, max: number): Promise<IDataObject[]> {
		const items: IDataObject[] = [];
		let cursor: string | null = null;
		do {
			const pageSize = Math.min(PAGE_LIMIT, max - items.length);
			const page = (await this.get(path, { ...qs, limit: pageSize, ...(cursor ? { cursor } : {}) })) as Page;
			items.push(...page.items);
			cursor = cursorOf(page.next);
		} while (cursor && items.length < max);
		return items.slice(0, max);
	}
}

// Asked for per page; the API answers at most its FLEXDB_PAGE_SIZE_MAX and a cursor for the rest.
const PAGE_LIMIT = 100;

function cursorOf(next: string | null): string | null {
	const match = next ? /[?&]cursor=([^&#]*)/.exec(next) : null;
	return match ? decodeURIComponent(match[1].replace(/\+/g, ' ')) : null;
}

function isObject(value: unknown): value is IDataObject {
	return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseJson(body: unknown): unknown {
	if (typeof body !== 'string' || body === '') {
		return body;
	}
	try {
		return JSON.parse(body);
	} catch {
		return body;
	}
}
