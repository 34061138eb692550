import type {
	ICredentialDataDecryptedObject,
	ICredentialTestRequest,
	ICredentialType,
	IHttpRequestOptions,
	INodeProperties,
} from 'n8n-workflow';

export class FlexDbApi implements ICredentialType {
	name = 'flexDbApi';

	displayName = 'Flexible Database API';

	icon = 'file:../icons/flexdb.svg' as const;

	properties: INodeProperties[] = [
		{
			displayName: 'Base URL',
			name: 'baseUrl',
			type: 'string',
			default: '',
			required: true,
			placeholder: 'http://api:8000/api/v1',
			description:
				'The API base, ending in /api/v1, as n8n reaches it (in Docker Compose: the service name, not 127.0.0.1)',
		},
		{
			displayName: 'API Token',
			name: 'apiToken',
			type: 'string',
			typeOptions: { password: true },
			default: '',
			description:
				"The service's FLEXDB_API_TOKEN, sent as 'Authorization: Bearer <token>'. Leave empty when the service has none.",
		},
	];

	// A function rather than a header template: without a token no Authorization header is sent at all.
	authenticate = async (
		credentials: ICredentialDataDecryptedObject,
		requestOptions: IHttpRequestOptions,
	): Promise<IHttpRequestOptions> => {
		const token = String(credentials.apiToken ?? '');
		if (token) {
			requestOptions.headers = { ...requestOptions.headers, Authorization: `Bearer ${token}` };
		}
		return requestOptions;
	};

	// GET /targets needs the token when the service has one, so it proves both address and token.
	test: ICredentialTestRequest = {
		request: {
			baseURL: '={{ $credentials.baseUrl.replace(/\\/+$/, "") }}',
			url: '/targets',
		},
	};
}
